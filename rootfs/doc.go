// Package rootfs builds rackboot's master root images from declarative
// recipes (rootfs/recipes/NAME.yaml), reproducibly: the same recipe and
// the same Debian package versions give the same bytes.
//
// Boards boot a master image read-only over NBD, each with a
// copy-on-write layer of its own for the boot, so the image must carry
// nothing that belongs to one machine or one boot; [Inspect] checks that,
// at the end of every [Build] and on its own (mkrootfs inspect).
//
// # Recipes
//
// [Load] reads a recipe strictly: unknown or duplicate keys and bad values
// are errors with file and line. The format is described in
// rootfs/README.md and by the [Recipe] type.
//
// # Building
//
// [Build] runs mmdebstrap --mode=root with SOURCE_DATE_EPOCH into a
// directory, customizes it ([Customize]: files, services, the agent,
// removal of per-host state), clamps every time stamp to the epoch
// ([ClampTimes]) and makes an ext4 image of it ([Ext4.Make]) with a UUID
// and directory hash seed derived from the recipe. It writes
// out/images/NAME-ARCH/root.img and manifest.json ([Manifest]).
//
// # Caveats
//
// Build needs root, and for a foreign architecture qemu-user-static
// registered with binfmt_misc ([CheckEmulation]). Reproducibility holds
// for the same package versions: the archive moves on, so two builds a
// week apart differ unless the recipe's mirrors point at
// snapshot.debian.org.
package rootfs
