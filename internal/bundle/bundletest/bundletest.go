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
	var gb bytes.Buffer
	zw := gzip.NewWriter(&gb)
	tw := tar.NewWriter(zw)
	m := reconcile.Manifest{Name: name, Version: "1.0.0"}.Marshal()
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
