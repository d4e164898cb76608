// What every layer agrees on about a plugin: which names are valid (they
// become path components on a box) and how its manifest, plugin.yaml, is
// read.

package reconcile

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"

	"go.yaml.in/yaml/v3"
)

// ManifestFile is the manifest's file name inside a plugin's directory.
const ManifestFile = "plugin.yaml"

// MaxManifestBytes caps how much of a manifest is read from a box. Real
// manifests are a few hundred bytes; anything larger is not a manifest.
const MaxManifestBytes = 64 << 10

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidateName reports whether name may be used as a plugin name. Names become
// path components on boxes, so the rule is strict: lower-case ASCII letters,
// digits, '.', '_' and '-', starting with a letter or digit, at most 64 bytes,
// and never "." or "..".
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("plugin name %q must match %s", name, nameRE)
	}
	return nil
}

var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$`)

// ValidateVersion reports whether v may be used as a plugin version. Versions
// become path components in the catalog, so they follow the same discipline as
// names (with upper case and '+' allowed, as in semantic versions).
func ValidateVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("plugin version %q must match %s", v, versionRE)
	}
	return nil
}

// Manifest is the content of plugin.yaml.
type Manifest struct {
	Name    string `yaml:"name"`
	Version string `yaml:"version"`
	// Digest is optional: "sha256:<hex>" of the bundle the plugin came from,
	// when whoever installed it knew it.
	Digest string `yaml:"digest,omitempty"`
}

// ErrInvalidManifest is wrapped by every ParseManifest failure.
var ErrInvalidManifest = errors.New("invalid manifest")

// ParseManifest parses and checks a manifest. It refuses empty, oversized,
// binary or unparseable input and manifests without a valid name or version.
// The YAML library bounds alias expansion, so alias bombs fail here too.
func ParseManifest(data []byte) (Manifest, error) {
	var m Manifest
	switch {
	case len(bytes.TrimSpace(data)) == 0:
		return m, fmt.Errorf("%w: empty", ErrInvalidManifest)
	case len(data) > MaxManifestBytes:
		return m, fmt.Errorf("%w: larger than %d bytes", ErrInvalidManifest, MaxManifestBytes)
	case bytes.IndexByte(data, 0) >= 0:
		return m, fmt.Errorf("%w: binary content", ErrInvalidManifest)
	}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if err := ValidateName(m.Name); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if err := ValidateVersion(m.Version); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	return m, nil
}

// Marshal renders m as plugin.yaml content.
func (m Manifest) Marshal() []byte {
	out, err := yaml.Marshal(m)
	if err != nil {
		// A struct of three strings always marshals.
		panic(fmt.Sprintf("marshal manifest: %v", err))
	}
	return out
}
