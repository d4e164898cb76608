// Package bundle packs a plugin directory into a deterministic tar.gz and
// checks a tar.gz before it is installed on a box. Pack and Check are two
// sides of one format: what Pack makes, Check accepts.
package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// MaxUnpacked caps a bundle's unpacked size (and so a gzip bomb's).
const MaxUnpacked = 256 << 20

// MaxEntries caps the number of entries in a bundle.
const MaxEntries = 20000

// epoch is the modification time of every packed entry, so that the same
// files always pack to the same bytes.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Digest is the "sha256:<hex>" digest of a packed bundle.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Pack packs dir as a deterministic tar.gz: entries sorted, times, owners and
// modes normalised, no gzip name or time. Regular files, directories and
// relative symlinks are packed; anything else is an error.
func Pack(dir string) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", dir, err)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Name: rel, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case fi.Mode().IsRegular():
			hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, fi.Size(), 0o644
			if fi.Mode()&0o111 != 0 {
				hdr.Mode = 0o755
			}
		case fi.IsDir():
			hdr.Typeflag, hdr.Mode, hdr.Name = tar.TypeDir, 0o755, rel+"/"
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return nil, err
			}
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
		default:
			return nil, fmt.Errorf("pack %s: %s is neither a file, a directory nor a symlink", dir, rel)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if _, err := Check(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("pack %s: %w", dir, err)
	}
	return buf.Bytes(), nil
}

// ErrRejected is wrapped by every Check failure.
var ErrRejected = errors.New("bundle rejected")

func reject(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRejected, fmt.Sprintf(format, args...))
}

// PluginError: a plugin bundle was refused before anything was written.
// Permanent: the same bundle fails the same way.
type PluginError struct {
	Plugin, Reason string
}

func (e *PluginError) Error() string {
	return fmt.Sprintf("bundle for %s rejected: %s", e.Plugin, e.Reason)
}

// CheckPlugin refuses, as a *PluginError, a bundle that is unsafe to unpack
// or that is not the named plugin at the named version; otherwise it
// returns what Inspect learns of it.
func CheckPlugin(name, version string, data []byte) (Info, error) {
	info, err := Inspect(data)
	if err != nil {
		return info, &PluginError{Plugin: name, Reason: err.Error()}
	}
	if info.Manifest.Name != name {
		return info, &PluginError{Plugin: name, Reason: fmt.Sprintf("its manifest names plugin %q", info.Manifest.Name)}
	}
	if info.Manifest.Version != version {
		return info, &PluginError{Plugin: name, Reason: fmt.Sprintf("its manifest says version %s, not %s", info.Manifest.Version, version)}
	}
	return info, nil
}

// Info is what Inspect learns of a bundle.
type Info struct {
	Manifest reconcile.Manifest
	// ManifestDigest is "sha256:<hex>" of its plugin.yaml's bytes, to tell
	// an installed manifest edited on a box from the bundle's.
	ManifestDigest string
}

// Check is Inspect's manifest.
func Check(data []byte) (reconcile.Manifest, error) {
	info, err := Inspect(data)
	return info.Manifest, err
}

// DigestFile is the file the install writes into a plugin's directory
// after unpacking it: the bundle's digest. A bundle may not hold it.
const DigestFile = ".bundle-digest"

// Inspect reads a whole bundle and returns its manifest if the bundle is safe
// to unpack into a plugin directory: a gzip'd tar of regular files,
// directories and symlinks, every path relative and inside, no duplicates,
// no device files, no set-id bits, no data after the archive, sizes that
// hold, nothing named like the file the reconciler writes (DigestFile), and
// a plugin.yaml at the top that parses. Links are resolved against the
// archive's own entries, as the kernel will resolve them once unpacked
// (see checkTree): nothing is written through a link or under a file, and a
// symlink must resolve inside the plugin without passing through another
// symlink.
func Inspect(data []byte) (Info, error) {
	var m Info
	br := bytes.NewReader(data)
	zr, err := gzip.NewReader(br)
	if err != nil {
		return m, reject("not gzip: %v", err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	tree := map[string]treeEntry{} // clean path -> what it is
	var total int64
	var manifest []byte
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return m, reject("corrupt tar: %v", err)
		}
		if n >= MaxEntries {
			return m, reject("more than %d entries", MaxEntries)
		}
		name, err := entryPath(hdr.Name)
		if err != nil {
			return m, err
		}
		if _, dup := tree[name]; dup {
			return m, reject("duplicate entry %q", name)
		}
		if name == DigestFile {
			return m, reject("entry %q is the reconciler's own file", name)
		}
		if hdr.Typeflag != tar.TypeDir && strings.HasSuffix(hdr.Name, "/") {
			return m, reject("entry %q ends in a slash but is not a directory", hdr.Name)
		}
		if hdr.Mode&(0o4000|0o2000) != 0 {
			return m, reject("entry %q has a set-id bit", name)
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			if hdr.Size < 0 || total+hdr.Size > MaxUnpacked {
				return m, reject("unpacked size exceeds %d bytes", MaxUnpacked)
			}
			total += hdr.Size
			var w io.Writer = io.Discard
			var mbuf bytes.Buffer
			if name == reconcile.ManifestFile {
				w = &mbuf
			}
			got, err := io.Copy(w, tr)
			if err != nil {
				return m, reject("entry %q is cut short (declares %d bytes): %v", name, hdr.Size, err)
			}
			if got != hdr.Size {
				return m, reject("entry %q holds %d bytes, declares %d", name, got, hdr.Size)
			}
			if name == reconcile.ManifestFile {
				manifest = mbuf.Bytes()
			}
		case tar.TypeDir:
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
				return m, reject("symlink %q has no target", name)
			}
			if path.IsAbs(hdr.Linkname) {
				return m, reject("symlink %q points to absolute path %q", name, hdr.Linkname)
			}
		case tar.TypeLink:
			target, err := entryPath(hdr.Linkname)
			if err != nil {
				return m, reject("hard link %q points outside the plugin: %q", name, hdr.Linkname)
			}
			if tree[target].kind != tar.TypeReg {
				return m, reject("hard link %q must point to an earlier file, not %q", name, hdr.Linkname)
			}
		default:
			return m, reject("entry %q has type %q: only files, directories and links are allowed", name, hdr.Typeflag)
		}
		tree[name] = treeEntry{kind: hdr.Typeflag, link: hdr.Linkname}
	}
	// After the archive's end there may only be tar's zero padding.
	if _, err := io.Copy(io.Discard, zeroCheck{zr}); err != nil {
		return m, reject("data after the archive: %v", err)
	}
	// bytes.Reader is an io.ByteReader, so gzip reads no further than its
	// stream: what is left is a second stream or garbage.
	if br.Len() != 0 {
		return m, reject("%d bytes after the gzip stream", br.Len())
	}
	if err := checkTree(tree); err != nil {
		return m, err
	}
	if tree[reconcile.ManifestFile].kind != tar.TypeReg {
		return m, reject("no regular file %s at the top", reconcile.ManifestFile)
	}
	m.Manifest, err = reconcile.ParseManifest(manifest)
	if err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrRejected, err)
	}
	m.ManifestDigest = Digest(manifest)
	return m, nil
}

// treeEntry is one archive entry as checkTree sees it.
type treeEntry struct {
	kind byte   // tar type flag
	link string // a symlink's target
}

// checkTree judges the tree the archive unpacks to, whatever the order of
// its entries: every entry's parents are directories (none is a file or a
// symlink, so nothing is written through a link, and a link never replaces
// a directory that holds entries), and every symlink resolves, the way the
// kernel resolves it, to a path inside the plugin without passing through
// another symlink of the archive (so no chain of lexically harmless links
// leaves the plugin, and no link points at a link).
func checkTree(tree map[string]treeEntry) error {
	names := make([]string, 0, len(tree))
	for name := range tree {
		names = append(names, name)
	}
	sort.Strings(names) // the first failure is the same every time
	for _, name := range names {
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if e, ok := tree[dir]; ok && e.kind != tar.TypeDir {
				what := "a file"
				if e.kind == tar.TypeSymlink {
					what = "a symlink"
				}
				return reject("entry %q is written through %q, which is %s", name, dir, what)
			}
		}
	}
	for _, name := range names {
		e := tree[name]
		if e.kind != tar.TypeSymlink {
			continue
		}
		if err := resolveLink(tree, name, e.link); err != nil {
			return err
		}
	}
	return nil
}

// resolveLink walks symlink name's target one component at a time from the
// link's directory, as the kernel does, and refuses a walk that leaves the
// plugin or meets a symlink (or a file with more to walk) of the archive.
func resolveLink(tree map[string]treeEntry, name, target string) error {
	var at []string // the walk's position, components from the plugin's top
	if d := path.Dir(name); d != "." {
		at = strings.Split(d, "/")
	}
	parts := strings.Split(target, "/")
	for i, part := range parts {
		switch part {
		case "", ".":
			continue
		case "..":
			if len(at) == 0 {
				return reject("symlink %q points outside the plugin: %q", name, target)
			}
			at = at[:len(at)-1]
			continue
		}
		at = append(at, part)
		here := strings.Join(at, "/")
		e, ok := tree[here]
		switch {
		case !ok:
		case e.kind == tar.TypeSymlink:
			return reject("symlink %q resolves through another symlink, %q: links to links are refused", name, here)
		case e.kind != tar.TypeDir && i < len(parts)-1:
			return reject("symlink %q resolves through %q, which is a file", name, here)
		}
	}
	return nil
}

// entryPath normalises an entry name and refuses names that leave the
// plugin directory.
func entryPath(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) || strings.Contains(name, "\\") {
		return "", reject("bad entry name %q", name)
	}
	if path.IsAbs(name) {
		return "", reject("entry %q has an absolute path", name)
	}
	for _, part := range strings.Split(strings.TrimSuffix(name, "/"), "/") {
		if part == ".." {
			return "", reject("entry %q leaves the plugin directory", name)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", reject("entry %q names the plugin directory itself", name)
	}
	return clean, nil
}

type zeroCheck struct{ r io.Reader }

func (z zeroCheck) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	for _, b := range p[:n] {
		if b != 0 {
			return n, errors.New("non-zero bytes")
		}
	}
	return n, err
}
