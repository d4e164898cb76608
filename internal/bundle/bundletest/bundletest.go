// Package bundletest builds raw plugin bundles for tests, including ones
// that Pack would never make (traversal, links out, devices, cut streams).
package bundletest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Raw is a tar.gz holding a valid plugin.yaml for name@1.0.0 followed by
// the extra entries as given (regular files filled with 'x').
func Raw(t testing.TB, name string, extra ...tar.Header) []byte {
	t.Helper()
	return RawAt(t, name, "1.0.0", extra...)
}

// RawAt is Raw for name@version.
func RawAt(t testing.TB, name, version string, extra ...tar.Header) []byte {
	t.Helper()
	var gb bytes.Buffer
	zw := gzip.NewWriter(&gb)
	tw := tar.NewWriter(zw)
	m := reconcile.Manifest{Name: name, Version: version}.Marshal()
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: reconcile.ManifestFile, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(m))}))
	_, err := tw.Write(m)
	require.NoError(t, err)
	for _, h := range extra {
		require.NoError(t, tw.WriteHeader(&h))
		if h.Typeflag == tar.TypeReg {
			_, err := tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	require.NoError(t, zw.Close())
	return gb.Bytes()
}

// Shape is a bundle the fault suite feeds the reconciler: entries after a
// valid plugin.yaml, and how many bytes are cut off the stream's end.
type Shape struct {
	Name  string // short and a valid plugin-name suffix
	Extra []tar.Header
	Cut   int // bytes cut off the end: an entry that claims more than follows
}

// Bundle is the shape as plugin@1.0.0's bundle.
func (s Shape) Bundle(t testing.TB, plugin string) []byte {
	t.Helper()
	data := Raw(t, plugin, s.Extra...)
	return data[:len(data)-s.Cut]
}

func reg(name string) tar.Header {
	return tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 4}
}
func dir(name string) tar.Header { return tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
func link(name, target string) tar.Header {
	return tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}
}

// Hostile are the shapes every layer refuses before anything is written on
// a box: each would write, or point, outside the plugin's directory, or
// onto a file the reconciler owns, or is not an archive that holds.
var Hostile = []Shape{
	{Name: "dotdot", Extra: []tar.Header{reg("../../../tmp/pwned")}},
	{Name: "absolute", Extra: []tar.Header{reg("/etc/cron.d/pwned")}},
	{Name: "symlink", Extra: []tar.Header{link("etc", "/etc")}},
	{Name: "symlink-up", Extra: []tar.Header{link("l", "../../..")}},
	{Name: "hardlink", Extra: []tar.Header{{Name: "passwd", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}}},
	{Name: "device", Extra: []tar.Header{{Name: "mem", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 1}}},
	{Name: "fifo", Extra: []tar.Header{{Name: "pipe", Typeflag: tar.TypeFifo}}},
	{Name: "setuid", Extra: []tar.Header{{Name: "su", Typeflag: tar.TypeReg, Mode: 0o4755}}},
	{Name: "lying", Extra: []tar.Header{{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4096}}, Cut: 24},
	// A link that is lexically inside but resolves, through another link
	// of the archive, to a sibling plugin: the file the install writes
	// after unpacking would land there.
	{Name: "link-chain", Extra: []tar.Header{dir("a/"), link("a/up", ".."), link(".bundle-digest", "a/up/../victim/plugin.yaml")}},
	{Name: "link-through-link", Extra: []tar.Header{dir("a/"), link("a/up", ".."), link("b", "a/up/../victim")}},
	{Name: "link-to-link", Extra: []tar.Header{link("a", "b"), link("b", "a")}},
	{Name: "digest-file", Extra: []tar.Header{reg(".bundle-digest")}},
	{Name: "through-symlink", Extra: []tar.Header{link("l", "sub"), reg("l/x")}},
	{Name: "symlink-over-dir", Extra: []tar.Header{reg("d/x"), link("d", "e")}},
	{Name: "file-as-dir", Extra: []tar.Header{reg("f"), reg("f/x")}},
}

// Entries are a tar.gz's headers, in order.
func Entries(t testing.TB, data []byte) []tar.Header {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	require.NoError(t, err)
	tr := tar.NewReader(zr)
	var out []tar.Header
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		out = append(out, *h)
	}
	return out
}
