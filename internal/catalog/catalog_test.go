package catalog

import (
	"context"
	"os"
	"path/filepath"
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
