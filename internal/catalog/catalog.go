// Package catalog serves plugin bundles from a directory laid out as
// <dir>/<name>/<version>/ (each holding plugin.yaml and the plugin's files),
// packed as deterministic tar.gz with a sha256 digest, or as
// <dir>/<name>/<version>.tar.gz, a bundle packed elsewhere and served as it
// is (what an object store would hold). Bundles are checked again before
// they are installed on a box.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/plugin"
)

// ErrUnknownPlugin: the catalog has no such plugin or version.
var ErrUnknownPlugin = errors.New("unknown plugin")

// Bundle is a packed plugin.
type Bundle struct {
	Name, Version string
	Data          []byte
	Digest        string // "sha256:<hex>" of Data
}

// Catalog is a directory of plugins. Packed bundles are cached: a version's
// files are immutable once published.
type Catalog struct {
	dir   string
	mu    sync.Mutex
	cache map[string]Bundle
}

// New opens the catalog at dir.
func New(dir string) (*Catalog, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("catalog %s is not a directory", dir)
	}
	return &Catalog{dir: dir, cache: map[string]Bundle{}}, nil
}

// Bundle packs (or returns the cached pack of) plugin name at version.
func (c *Catalog) Bundle(_ context.Context, name, version string) (Bundle, error) {
	if err := plugin.ValidateName(name); err != nil {
		return Bundle{}, err
	}
	if err := plugin.ValidateVersion(version); err != nil {
		return Bundle{}, err
	}
	key := name + "@" + version
	c.mu.Lock()
	b, ok := c.cache[key]
	c.mu.Unlock()
	if ok {
		return b, nil
	}
	dir := filepath.Join(c.dir, name, version)
	if packed, err := os.ReadFile(dir + ".tar.gz"); err == nil {
		b = Bundle{Name: name, Version: version, Data: packed, Digest: bundle.Digest(packed)}
		c.mu.Lock()
		c.cache[key] = b
		c.mu.Unlock()
		return b, nil
	}
	if _, err := os.Stat(filepath.Join(dir, plugin.ManifestFile)); err != nil {
		return Bundle{}, fmt.Errorf("%w: %s", ErrUnknownPlugin, key)
	}
	data, err := bundle.Pack(dir)
	if err != nil {
		return Bundle{}, fmt.Errorf("catalog %s: %w", key, err)
	}
	m, err := bundle.Check(data)
	if err != nil {
		return Bundle{}, fmt.Errorf("catalog %s: %w", key, err)
	}
	if m.Name != name || m.Version != version {
		return Bundle{}, fmt.Errorf("catalog %s: its manifest says %s@%s", key, m.Name, m.Version)
	}
	b = Bundle{Name: name, Version: version, Data: data, Digest: bundle.Digest(data)}
	c.mu.Lock()
	c.cache[key] = b
	c.mu.Unlock()
	return b, nil
}

// Publish writes a plugin version into a catalog directory: its manifest and
// the given files (path -> content). For the demo and tests.
func Publish(dir, name, version string, files map[string]string) error {
	if err := plugin.ValidateName(name); err != nil {
		return err
	}
	if err := plugin.ValidateVersion(version); err != nil {
		return err
	}
	root := filepath.Join(dir, name, version)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, plugin.ManifestFile), plugin.Manifest{Name: name, Version: version}.Marshal(), 0o644); err != nil {
		return err
	}
	for p, body := range files {
		full := filepath.Join(root, filepath.FromSlash(p))
		if rel, err := filepath.Rel(root, full); err != nil || rel == ".." || filepath.IsAbs(rel) || len(rel) >= 3 && rel[:3] == "../" {
			return fmt.Errorf("publish %s@%s: file %q leaves the plugin", name, version, p)
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
