package reconcile

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidateName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"github-tools", true},
		{"a", true},
		{"mcp.server_2", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{strings.Repeat("a", 200), false},
		{"", false},
		{".", false},
		{"..", false},
		{"../etc", false},
		{"a/b", false},
		{"/abs", false},
		{"has space", false},
		{"semi;colon", false},
		{"$(reboot)", false},
		{"`id`", false},
		{"Upper", false},
		{"-leading-dash", false},
		{"_leading", false},
		{"gіthub", false}, // Cyrillic і: a look-alike
		{"tab\tname", false},
		{"new\nline", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if tt.ok {
			require.NoError(t, err, tt.name)
		} else {
			require.Error(t, err, tt.name)
		}
	}
}

func TestValidateVersion(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"1.2.0", "2024.01.01", "1.0.0-rc.1", "1.0.0+build5"} {
		require.NoError(t, ValidateVersion(v), v)
	}
	for _, v := range []string{"", "../1", "1 0", "1/0", ".hidden", strings.Repeat("1", 65)} {
		require.Error(t, ValidateVersion(v), v)
	}
}

func TestParseManifest(t *testing.T) {
	t.Parallel()
	bomb := "a: &a [x,x,x,x,x,x,x,x,x]\n"
	prev := "a"
	for _, n := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
		bomb += n + ": &" + n + " [*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + "]\n"
		prev = n
	}
	bomb += "name: x\nversion: *i\n"

	tests := []struct {
		desc    string
		in      string
		want    Manifest
		wantErr string
	}{
		{"ok", "name: github-tools\nversion: 1.2.0\n", Manifest{Name: "github-tools", Version: "1.2.0"}, ""},
		{"with digest", "name: x\nversion: '2'\ndigest: sha256:ab\n", Manifest{Name: "x", Version: "2", Digest: "sha256:ab"}, ""},
		{"empty", "", Manifest{}, "empty"},
		{"whitespace", " \n\t\n", Manifest{}, "empty"},
		{"binary", "name: x\x00\x01", Manifest{}, "binary"},
		{"oversized", "name: x\nversion: '1'\n#" + strings.Repeat("x", MaxManifestBytes), Manifest{}, "larger than"},
		{"unparseable", "name: [unclosed\n", Manifest{}, "invalid manifest"},
		{"no version", "name: x\n", Manifest{}, "version"},
		{"bad name", "name: ../x\nversion: '1'\n", Manifest{}, "plugin name"},
		{"alias bomb", bomb, Manifest{}, "invalid manifest"},
		{"extra fields allowed", "name: x\nversion: '1'\ndescription: tools\n", Manifest{Name: "x", Version: "1"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := ParseManifest([]byte(tt.in))
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalidManifest)
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestManifestRoundTrip(t *testing.T) {
	t.Parallel()
	m := Manifest{Name: "a.b", Version: "1.0.0", Digest: "sha256:00"}
	got, err := ParseManifest(m.Marshal())
	require.NoError(t, err)
	require.Equal(t, m, got)
}
