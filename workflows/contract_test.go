package workflows

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The JSON contract for callers in other languages (the README's
// "Calling from another language"): the fixtures are what such a caller
// sends and reads. Each decodes into its Go type with no unknown field and
// encodes back to the same JSON, and together they show every field.
func TestJSONContractFixturesRoundTrip(t *testing.T) {
	fixtures := []struct {
		file  string
		into  any
		input bool // a caller's input: it must validate
	}{
		{"reconcile-input.json", &ReconcileInput{}, true},
		{"converge-input.json", &ReconcileInput{}, true},
		{"declare-signal.json", &Declaration{}, true},
		{"status-query.json", &Status{}, false},
		{"reconcile-result.json", &ReconcileResult{}, false},
		{"plan-result.json", &ReconcileResult{}, false},
	}
	keys := map[string]bool{}
	for _, f := range fixtures {
		t.Run(f.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", "contract", f.file))
			require.NoError(t, err)
			dec := json.NewDecoder(bytes.NewReader(data))
			dec.DisallowUnknownFields()
			require.NoError(t, dec.Decode(f.into), "every field is one of the Go type's")
			out, err := json.Marshal(f.into)
			require.NoError(t, err)
			require.JSONEq(t, string(data), string(out), "the Go type writes the same JSON back")
			if f.input {
				v, ok := f.into.(interface{ Validate() error })
				require.True(t, ok)
				require.NoError(t, v.Validate())
			}
			var generic any
			require.NoError(t, json.Unmarshal(data, &generic))
			collectKeys(generic, keys)
		})
	}
	for _, typ := range []any{ReconcileInput{}, Declaration{}, Status{}, ReconcileResult{}, PluginResult{}, RestartReport{}, Plugin{}} {
		rt := reflect.TypeOf(typ)
		for i := range rt.NumField() {
			f := rt.Field(i)
			if !f.IsExported() {
				continue
			}
			name := f.Name
			if tag, _, _ := strings.Cut(f.Tag.Get("json"), ","); tag != "" {
				name = tag
			}
			require.True(t, keys[name], "%s.%s appears in no fixture", rt.Name(), f.Name)
		}
	}
}

func collectKeys(v any, keys map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			keys[k] = true
			collectKeys(e, keys)
		}
	case []any:
		for _, e := range x {
			collectKeys(e, keys)
		}
	}
}
