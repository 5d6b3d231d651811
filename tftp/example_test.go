package tftp_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	pin "github.com/pin/tftp/v3"

	"github.com/rackboot/rackboot/tftp"
)

func ExampleServer() {
	dir, err := os.MkdirTemp("", "tftp-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "pxelinux.0"), []byte("not really PXELINUX"), 0o644)
	root, err := os.OpenRoot(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer root.Close()

	// In the appliance: srv.ListenAndServe(ctx, ":69").
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	reports := make(chan tftp.Transfer, 10)
	srv := &tftp.Server{
		Handler:    tftp.FileHandler(root),
		OnTransfer: func(t tftp.Transfer) { reports <- t },
	}
	go func() { done <- srv.Serve(ctx, pc) }()

	c, err := pin.NewClient(pc.LocalAddr().String())
	if err != nil {
		log.Fatal(err)
	}
	c.SetBlockSize(1468)
	for _, name := range []string{"pxelinux.0", "../etc/passwd"} {
		wt, err := c.Receive(name, "octet")
		if err != nil {
			fmt.Printf("client: %s: %s\n", name, strings.TrimRight(err.Error(), "\x00"))
			continue
		}
		var b bytes.Buffer
		wt.WriteTo(&b)
		fmt.Printf("client: %s: %q\n", name, b.String())
	}
	cancel()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Serve has returned: every transfer has been reported, in the order
	// they ended.
	close(reports)
	var lines []string
	for t := range reports {
		lines = append(lines, fmt.Sprintf("server: %s: %d bytes, err %v", t.Path, t.Bytes, t.Err))
	}
	slices.Sort(lines)
	fmt.Println(strings.Join(lines, "\n"))
	// Output:
	// client: pxelinux.0: "not really PXELINUX"
	// client: ../etc/passwd: code: 2, message: access violation
	// server: ../etc/passwd: 0 bytes, err file name "../etc/passwd" has a ".." component: permission denied
	// server: pxelinux.0: 19 bytes, err <nil>
}

func ExampleCleanPath() {
	for _, p := range []string{"pxelinux.cfg//default", "./boot.scr.uimg", "/etc/passwd", "a/../../x", `EFI\BOOT`} {
		clean, err := tftp.CleanPath(p)
		fmt.Printf("%q: %q %v\n", p, clean, err)
	}
	// Output:
	// "pxelinux.cfg//default": "pxelinux.cfg/default" <nil>
	// "./boot.scr.uimg": "boot.scr.uimg" <nil>
	// "/etc/passwd": "" absolute file name "/etc/passwd": permission denied
	// "a/../../x": "" file name "a/../../x" has a ".." component: permission denied
	// "EFI\\BOOT": "" file name "EFI\\BOOT" has a backslash: permission denied
}
