package benchkit

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Report is a results report: header lines, tables and notes.
type Report struct {
	// Header is the title, then lines such as the machine and the
	// versions.
	Header []string
	// Tables each have a header row; their first two columns are labels
	// and the others figures.
	Tables [][][]string
	// Notes are printed under the tables, one per line, as they are.
	Notes []string
}

// WriteText writes the report as aligned plain-text tables.
func (r Report) WriteText(w io.Writer) {
	for _, l := range r.Header {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintln(w)
	for _, t := range r.Tables {
		WriteTextTable(w, t)
		fmt.Fprintln(w)
	}
	for _, l := range r.Notes {
		fmt.Fprintln(w, "- "+l)
	}
}

// WriteMarkdown writes the report as Markdown, for the README: the title
// as a heading, the other header lines as lines of one paragraph, the
// tables and the notes as a list.
func (r Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "### %s\n\n", r.Header[0])
	for _, l := range r.Header[1:] {
		fmt.Fprintf(w, "%s  \n", l)
	}
	fmt.Fprintln(w)
	for _, t := range r.Tables {
		WriteMarkdownTable(w, t)
		fmt.Fprintln(w)
	}
	for _, l := range r.Notes {
		fmt.Fprintln(w, "- "+l)
	}
}

// WriteTextTable writes t, a header row and lines of cells, as aligned
// plain text: the first two columns aligned left, the others right, and a
// rule under the header.
func WriteTextTable(w io.Writer, t [][]string) {
	width := make([]int, len(t[0]))
	for _, line := range t {
		for i, c := range line {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for li, line := range t {
		var sb strings.Builder
		for i, c := range line {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i < 2 {
				sb.WriteString(c + pad)
			} else {
				sb.WriteString(pad + c)
			}
			if i < len(line)-1 {
				sb.WriteString("  ")
			}
		}
		fmt.Fprintln(w, strings.TrimRight(sb.String(), " "))
		if li == 0 {
			total := len(width)*2 - 2
			for _, x := range width {
				total += x
			}
			fmt.Fprintln(w, strings.Repeat("-", total))
		}
	}
}

// WriteMarkdownTable writes t, a header row and lines of cells, as a
// Markdown table: the first two columns aligned left, the others right.
func WriteMarkdownTable(w io.Writer, t [][]string) {
	for li, line := range t {
		cells := make([]string, len(line))
		for i, c := range line {
			cells[i] = EscapePipes(c)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
		if li == 0 {
			sep := make([]string, len(line))
			for i := range sep {
				sep[i] = "---:"
				if i < 2 {
					sep[i] = "---"
				}
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(sep, " | "))
		}
	}
}

// RatioCells returns a results table's last two cells for rackboot's ratio
// to the best reference, q, oriented so that >= 1 means rackboot is at
// least as good: the ratio to two decimals, and "met" if it shows as at
// least 1.00x, else "MISSED". Without a ratio (!ok), both are "n/a".
func RatioCells(q float64, ok bool) []string {
	if !ok {
		return []string{"n/a", "n/a"}
	}
	shown := fmt.Sprintf("%.2f", q)
	verdict := "met"
	if v, _ := strconv.ParseFloat(shown, 64); v < 1 { // judged as shown
		verdict = "MISSED"
	}
	return []string{shown + "x", verdict}
}

// EscapePipes escapes the vertical bars in s, which would end a Markdown
// table cell.
func EscapePipes(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// WriteFile creates the file at path and has write fill it.
func WriteFile(path string, write func(io.Writer)) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	write(f)
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
