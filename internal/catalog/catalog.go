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
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/sync/singleflight"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// ErrUnknownPlugin: the catalog has no such plugin or version.
var ErrUnknownPlugin = errors.New("unknown plugin")

// Bundle is a packed plugin.
type Bundle struct {
	Name, Version string
	Data          []byte
	Digest        string // "sha256:<hex>" of Data
}

// DefaultCacheBytes bounds the packed bundles a catalog keeps in memory.
const DefaultCacheBytes = 256 << 20

// Catalog is a directory of plugins. Packed bundles are cached (a version's
// files are immutable once published), least recently used first out when
// the cache is over its byte budget; callers asking for one bundle at once
// share one pack.
type Catalog struct {
	dir      string
	maxBytes int64

	mu    sync.Mutex
	cache *simplelru.LRU[string, Bundle]
	bytes int64

	packs  singleflight.Group
	loaded atomic.Int64
}

// New opens the catalog at dir with the default cache.
func New(dir string) (*Catalog, error) { return NewWithCache(dir, DefaultCacheBytes) }

// NewWithCache opens the catalog at dir, caching at most maxBytes of
// packed bundles.
func NewWithCache(dir string, maxBytes int64) (*Catalog, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("catalog %s is not a directory", dir)
	}
	c := &Catalog{dir: dir, maxBytes: maxBytes}
	// The LRU bounds entries generously; bytes are bounded below.
	c.cache, err = simplelru.NewLRU(1<<16, func(_ string, b Bundle) { c.bytes -= int64(len(b.Data)) })
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Loads counts the bundles packed (or read) from the directory so far: a
// cache hit or a shared pack loads nothing.
func (c *Catalog) Loads() int64 { return c.loaded.Load() }

// CachedBytes is the size of the packed bundles held in memory.
func (c *Catalog) CachedBytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Bundle packs (or returns the cached pack of) plugin name at version.
func (c *Catalog) Bundle(_ context.Context, name, version string) (Bundle, error) {
	if err := reconcile.ValidateName(name); err != nil {
		return Bundle{}, err
	}
	if err := reconcile.ValidateVersion(version); err != nil {
		return Bundle{}, err
	}
	key := name + "@" + version
	c.mu.Lock()
	b, ok := c.cache.Get(key)
	c.mu.Unlock()
	if ok {
		return b, nil
	}
	v, err, _ := c.packs.Do(key, func() (any, error) {
		b, err := c.load(name, version)
		if err != nil {
			return Bundle{}, err
		}
		c.keep(key, b)
		return b, nil
	})
	return v.(Bundle), err
}

func (c *Catalog) keep(key string, b Bundle) {
	size := int64(len(b.Data))
	if size > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.cache.Peek(key); ok {
		c.bytes -= int64(len(old.Data)) // replaced: Add does not call back
	}
	c.cache.Add(key, b)
	c.bytes += size
	for c.bytes > c.maxBytes {
		c.cache.RemoveOldest()
	}
}

func (c *Catalog) load(name, version string) (Bundle, error) {
	key := name + "@" + version
	dir := filepath.Join(c.dir, name, version)
	c.loaded.Add(1)
	if packed, err := os.ReadFile(dir + ".tar.gz"); err == nil {
		return Bundle{Name: name, Version: version, Data: packed, Digest: bundle.Digest(packed)}, nil
	}
	if _, err := os.Stat(filepath.Join(dir, reconcile.ManifestFile)); err != nil {
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
	return Bundle{Name: name, Version: version, Data: data, Digest: bundle.Digest(data)}, nil
}

// Publish writes a plugin version into a catalog directory: its manifest and
// the given files (path -> content). For the demo and tests.
func Publish(dir, name, version string, files map[string]string) error {
	if err := reconcile.ValidateName(name); err != nil {
		return err
	}
	if err := reconcile.ValidateVersion(version); err != nil {
		return err
	}
	root := filepath.Join(dir, name, version)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, reconcile.ManifestFile), reconcile.Manifest{Name: name, Version: version}.Marshal(), 0o644); err != nil {
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
