// Command mkinitramfs packs rackboot's initramfs reproducibly: the init
// program, optional extra files (busybox for rackboot.debug=shell) and a
// kernel module tree, as newc cpio archives with fixed timestamps,
// owners and ordering, each gzip-compressed without name or time.
//
// The output is two concatenated compressed archives, which the kernel
// unpacks one after the other: the base (init, files, directories,
// /dev/console) and the modules. The base's compressed size is checked
// against -budget.
//
//	mkinitramfs -o initramfs.cpio.gz -init init [-file bin/busybox=PATH] [-symlink bin/sh=busybox] [-modules TREE] [-budget 4MiB]
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/rackboot/rackboot/initramfs/mkinitramfs/pack"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitramfs:", err)
		os.Exit(1)
	}
}

type pairs []pack.Pair

func (p *pairs) String() string { return fmt.Sprint(*p) }
func (p *pairs) Set(v string) error {
	pr, err := pack.ParsePair(v)
	if err != nil {
		return err
	}
	*p = append(*p, pr)
	return nil
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mkinitramfs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "output file (required)")
	init := fs.String("init", "", "init program (required)")
	modules := fs.String("modules", "", "tree holding lib/modules/RELEASE to pack")
	budget := fs.Int64("budget", 4<<20, "maximum compressed size of the base archive (without modules), bytes; 0 for none")
	var files, links pairs
	fs.Var(&files, "file", "DEST=SRC: pack file SRC at DEST (repeatable)")
	fs.Var(&links, "symlink", "DEST=TARGET: pack a symbolic link (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *init == "" {
		fs.Usage()
		return errors.New("-o and -init are required")
	}
	sp := pack.Spec{Init: *init, Files: files, Symlinks: links, Modules: *modules}
	res, err := pack.Write(*out, sp)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "initramfs %s: %d bytes (base %d bytes = %.2f MiB, modules %d bytes, %d modules)\n",
		*out, res.Base+res.ModulesSize, res.Base, float64(res.Base)/(1<<20), res.ModulesSize, res.Modules)
	if *budget > 0 && res.Base > *budget {
		return fmt.Errorf("base initramfs is %d bytes, over the budget of %d bytes", res.Base, *budget)
	}
	return nil
}
