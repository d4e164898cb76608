package catalog

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
)

func TestBundleIsDeterministicAndChecked(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, Publish(dir, "github-tools", "1.2.0", map[string]string{"bin/gh": "#!/bin/sh\n"}))
	c, err := New(dir)
	require.NoError(t, err)
	b, err := c.Bundle(context.Background(), "github-tools", "1.2.0")
	require.NoError(t, err)
	require.Equal(t, bundle.Digest(b.Data), b.Digest)
	m, err := bundle.Check(b.Data)
	require.NoError(t, err)
	require.Equal(t, "1.2.0", m.Version)

	// A fresh catalog over the same files packs the same bytes.
	c2, err := New(dir)
	require.NoError(t, err)
	b2, err := c2.Bundle(context.Background(), "github-tools", "1.2.0")
	require.NoError(t, err)
	require.Equal(t, b.Digest, b2.Digest)
}

func TestUnknownPluginOrVersion(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, Publish(dir, "a", "1", nil))
	c, err := New(dir)
	require.NoError(t, err)
	_, err = c.Bundle(context.Background(), "a", "2")
	require.ErrorIs(t, err, ErrUnknownPlugin)
	_, err = c.Bundle(context.Background(), "b", "1")
	require.ErrorIs(t, err, ErrUnknownPlugin)
	_, err = c.Bundle(context.Background(), "../a", "1")
	require.ErrorContains(t, err, "plugin name")
	_, err = c.Bundle(context.Background(), "a", "../1")
	require.ErrorContains(t, err, "plugin version")
}

func TestManifestMustMatchItsPlace(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, Publish(dir, "a", "1", nil))
	require.NoError(t, os.Rename(filepath.Join(dir, "a", "1"), filepath.Join(dir, "a", "2")))
	c, err := New(dir)
	require.NoError(t, err)
	_, err = c.Bundle(context.Background(), "a", "2")
	require.ErrorContains(t, err, "its manifest says a@1")
}

func TestPublishRefusesEscapes(t *testing.T) {
	require.Error(t, Publish(t.TempDir(), "a", "1", map[string]string{"../../x": "x"}))
}

// Callers asking for one bundle at once share one pack (a delivery per
// plugin child arrives together on a fresh fleet).
func TestConcurrentCallersShareOnePack(t *testing.T) {
	dir := t.TempDir()
	noise := make([]byte, 4<<20)
	for i := range noise {
		noise[i] = byte(i * 7919 % 251)
	}
	require.NoError(t, Publish(dir, "big", "1.0.0", map[string]string{"blob": string(noise)}))
	c, err := New(dir)
	require.NoError(t, err)
	var wg sync.WaitGroup
	digests := make([]string, 16)
	for i := range digests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := c.Bundle(context.Background(), "big", "1.0.0")
			require.NoError(t, err)
			digests[i] = b.Digest
		}()
	}
	wg.Wait()
	for _, d := range digests {
		require.Equal(t, digests[0], d)
	}
	require.Equal(t, int64(1), c.Loads(), "16 callers at once, one pack")
}

// The cache keeps at most its byte budget, least recently used out first.
func TestCacheIsBoundedByBytes(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a", "b", "c", "d"} {
		require.NoError(t, Publish(dir, name, "1", map[string]string{"x": name}))
	}
	probe, err := New(dir)
	require.NoError(t, err)
	one, err := probe.Bundle(context.Background(), "a", "1")
	require.NoError(t, err)
	size := int64(len(one.Data))
	c, err := NewWithCache(dir, 2*size+size/2) // room for two
	require.NoError(t, err)
	get := func(name string) {
		_, err := c.Bundle(context.Background(), name, "1")
		require.NoError(t, err)
	}
	get("a")
	get("b")
	get("a") // a is now the most recent
	get("c") // evicts b
	require.LessOrEqual(t, c.CachedBytes(), 2*size+size/2)
	require.Equal(t, int64(3), c.Loads())
	get("a")
	require.Equal(t, int64(3), c.Loads(), "a stayed")
	get("b")
	require.Equal(t, int64(4), c.Loads(), "b was evicted and packed again")
}
