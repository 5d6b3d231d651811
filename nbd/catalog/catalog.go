package catalog

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/rackboot/rackboot/nbd"
	"github.com/rackboot/rackboot/nbd/cow"
)

// Image names an image file to serve.
type Image struct {
	Name string
	Path string
}

// Catalog serves a fixed set of images and their sessions. It is safe for
// concurrent use.
type Catalog struct {
	// Logger receives session events; nil discards them.
	Logger *slog.Logger

	images map[string]*cow.Image
	names  []string
	store  *cow.Store
}

// New opens every image (read-only) and returns a Catalog keeping sessions
// in store.
func New(images []Image, store *cow.Store) (*Catalog, error) {
	c := &Catalog{images: make(map[string]*cow.Image), store: store}
	for _, im := range images {
		if im.Name == "" || strings.Contains(im.Name, "@") {
			c.Close()
			return nil, fmt.Errorf("image name %q: must be non-empty and without '@'", im.Name)
		}
		if _, dup := c.images[im.Name]; dup {
			c.Close()
			return nil, fmt.Errorf("image %q listed twice", im.Name)
		}
		img, err := cow.OpenImage(im.Path)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("image %q: %w", im.Name, err)
		}
		c.images[im.Name] = img
		c.names = append(c.names, im.Name)
	}
	slices.Sort(c.names)
	return c, nil
}

func (c *Catalog) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// Image returns the opened image called name.
func (c *Catalog) Image(name string) (*cow.Image, bool) {
	img, ok := c.images[name]
	return img, ok
}

// Open resolves NAME to the read-only image and NAME@SESSION to a handle on
// the session, creating it if needed. Unknown images and invalid session
// names wrap fs.ErrNotExist.
func (c *Catalog) Open(_ context.Context, name string, peer netip.AddrPort) (*nbd.Export, error) {
	imgName, session, hasSession := strings.Cut(name, "@")
	img, ok := c.images[imgName]
	if !ok {
		return nil, fmt.Errorf("export %q: no such image: %w", name, fs.ErrNotExist)
	}
	if !hasSession {
		return &nbd.Export{
			Name:        name,
			Description: "image " + imgName + " (read-only)",
			Device:      img,
			ReadOnly:    true,
			MultiConn:   true,
		}, nil
	}
	if session == "" || !cow.ValidSessionName(name) {
		return nil, fmt.Errorf("export %q: invalid session name: %w", name, fs.ErrNotExist)
	}
	_, statErr := c.store.Info(name)
	h, err := c.store.Open(name, img, cow.SessionSpec{Image: imgName})
	if err != nil {
		return nil, fmt.Errorf("export %q: %w", name, err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		c.logger().Info("session created", "export", name, "peer", peer.String())
	}
	return &nbd.Export{
		Name:        name,
		Description: "copy-on-write session on image " + imgName,
		Device:      h,
		MultiConn:   true,
		Release: func() {
			if err := h.Close(); err != nil {
				c.logger().Error("closing session", "export", name, "err", err)
			}
		},
	}, nil
}

// List returns every image and every existing session.
func (c *Catalog) List(context.Context, netip.AddrPort) ([]nbd.ExportInfo, error) {
	var out []nbd.ExportInfo
	for _, n := range c.names {
		out = append(out, nbd.ExportInfo{Name: n, Description: "image " + n + " (read-only)"})
	}
	sessions, err := c.store.List()
	if err != nil {
		return nil, err
	}
	for _, s := range sessions {
		img, _, _ := strings.Cut(s.Name, "@")
		if _, ok := c.images[img]; ok {
			out = append(out, nbd.ExportInfo{Name: s.Name, Description: "copy-on-write session on image " + img})
		}
	}
	return out, nil
}

// Close closes the images. It doesn't close the store.
func (c *Catalog) Close() error {
	var errs []error
	for _, img := range c.images {
		errs = append(errs, img.Close())
	}
	return errors.Join(errs...)
}
