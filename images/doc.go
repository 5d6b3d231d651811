// Package images is the catalog of master root images: immutable,
// checksummed versions of each image, each with the kernel and initramfs
// it boots, and a pointer to the active version of each image.
//
// # Layout
//
// The catalog lives in STATE/images/, beside the session layers
// (STATE/sessions/) and rackboot.db:
//
//	.lock                            flock taken by every mutation
//	NAME/active                      the active version's name and a newline
//	NAME/VERSION/version.json        the catalog's record: files, sizes, sha256s
//	NAME/VERSION/manifest.json       the manifest, byte for byte as imported
//	NAME/VERSION/root.img            the root filesystem image, mode 0444
//	NAME/VERSION/boot/ARCH/KERNEL    kernel and initramfs per arch, mode 0444
//	NAME/VERSION/boot/ARCH/INITRD
//
// Names of images and versions are 1 to 64 characters from
// [A-Za-z0-9._-], starting with a letter or digit: a version is referred
// to as NAME@VERSION.
//
// # Versions
//
// A version never changes once imported. Its name is assigned at import
// from its contents: the manifest's epoch as a UTC date, a dash, and the
// first 12 hex digits of the sha256 of its file list, as in
// "20250601-3f2a9c1d4e5b". The file list is what sha256sum prints for
// the version's files (root.img, manifest.json and the boot files) in
// path order, so in a version's directory this prints the digest:
//
//	find . -type f ! -name version.json -printf '%P\n' | LC_ALL=C sort | xargs sha256sum | sha256sum
//
// The same build imported on two appliances gets the same name, importing
// it again is a no-op ([ErrExists]), a name is never reused for other
// bytes, and names sort by the date of the package snapshot. A manifest
// without an epoch gets the import date instead.
//
// # Concurrency
//
// Mutations (Import's final rename, Activate, GC) take an exclusive flock
// on STATE/images/.lock, so concurrent rackboot commands and the server
// serialise. Readers take no lock: the active pointer is replaced by
// rename(2), so a reader sees the old or the new version, never a torn
// pointer, and version directories appear by rename and are never written
// afterwards. Import copies and hashes outside the lock, in a temporary
// directory that it holds its own flock on.
//
// # Caveats
//
// GC deletes a version that is neither active nor in use. "In use" is what
// the caller says (the boots it has recorded) plus every session layer in
// STATE/sessions/ made over the version's root.img. A boot should
// therefore be recorded with its NAME@VERSION before the server relies on
// the version: between [Catalog.Active] and the record, a concurrent
// Activate and GC can remove the version, and [Catalog.Get] then fails
// with an error wrapping fs.ErrNotExist; read Active again. Files already
// open keep their bytes even then: deletion unlinks, it never writes.
package images
