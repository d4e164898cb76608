package fleet_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
)

// The box's own record, in the order things happened: a staged directory
// renamed in is a swap, a new invocation id a restart; dot-names (staging,
// locks, the reconciler's state) are not plugins.
func TestBoxRecordsSwapsAndRestartsInOrder(t *testing.T) {
	f := fleettest.New(t)
	b, err := f.AddBox(fleet.BoxSpec{})
	require.NoError(t, err)
	stage := func(name string) string {
		dir := filepath.Join(b.PluginRoot, "."+name+"-staging")
		require.NoError(t, os.MkdirAll(dir, 0o755))
		return dir
	}
	require.NoError(t, os.Rename(stage("a"), filepath.Join(b.PluginRoot, "a")))
	require.NoError(t, os.Rename(stage("hidden"), filepath.Join(b.PluginRoot, ".hidden")))
	out, err := exec.Command(filepath.Join(b.RuntimeDir, "restart")).CombinedOutput()
	require.NoError(t, err, string(out))
	require.NoError(t, os.Rename(stage("b"), filepath.Join(b.PluginRoot, "b")))
	require.NoError(t, os.RemoveAll(filepath.Join(b.PluginRoot, "a")))

	events, err := b.Events()
	require.NoError(t, err)
	var got []string
	for _, e := range events {
		got = append(got, string(e.Kind)+" "+e.Plugin)
	}
	require.Equal(t, []string{"swap a", "restart ", "swap b", "removal a"}, got)
	require.Equal(t, 1, b.Restarts())

	require.NoError(t, b.FailRestarts(1, 127))
	cmd := exec.Command(filepath.Join(b.RuntimeDir, "restart"))
	err = cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 127, exit.ExitCode())
	require.NoError(t, exec.Command(filepath.Join(b.RuntimeDir, "restart")).Run(), "only the next one failed")
	events, err = b.Events()
	require.NoError(t, err)
	require.Len(t, events, 5, "the failed restart left no trace")
	require.Equal(t, 2, b.Restarts())
}
