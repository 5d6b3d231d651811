// Package benchkit holds what the benchmark commands under scripts/
// (benchboot, benchnbd, benche2e) share: starting servers in process groups
// and reading their processes from /proc, files of random data, the
// machine description and the plain-text and Markdown tables of the
// reports, and the commands' main function.
package benchkit
