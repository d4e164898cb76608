package reconcile_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The domain package is a leaf: it imports nothing from the project, so
// that everything can depend on it and it on nothing of ours.
func TestImportsNothingFromTheProject(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	require.NoError(t, err, string(out))
	const module = "github.com/plugin-reconciler/plugin-reconciler/"
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, module) && dep != module+"internal/reconcile" {
			t.Errorf("internal/reconcile imports %s", dep)
		}
	}
}
