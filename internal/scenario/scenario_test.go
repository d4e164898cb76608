package scenario

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWorkspacesTellTheirStories(t *testing.T) {
	ws := Workspaces()
	require.Len(t, ws, 5)
	for _, w := range ws {
		missing, stale := 0, 0
		for _, p := range Declared {
			switch v, ok := w.Boot[p.Name]; {
			case !ok:
				missing++
			case v != p.Version:
				stale++
			}
		}
		require.Equal(t, missing+stale, w.WantDeliveries, "%s: a delivery per missing or stale plugin", w.ID)
		require.Equal(t, min(1, w.WantDeliveries), w.WantRestarts, "%s: one restart when something changed, none otherwise", w.ID)
	}
	// Each workspace's boot set is its own: changing one leaves the others.
	ws[0].Boot["github-tools"] = "0.0.1"
	require.Equal(t, "1.2.0", ws[1].Boot["github-tools"])
}

func TestCheck(t *testing.T) {
	w := Workspace{ID: "ws", WantDeliveries: 2, WantRestarts: 1}
	for _, c := range []struct {
		delivered, restarts int
		problem             string
	}{
		{2, 1, ""},
		{1, 1, "1 deliveries, expected 2"},
		{2, 0, "box restarted 0 times, expected 1"},
		{2, 2, "box restarted 2 times, expected 1"},
	} {
		err := w.Check(c.delivered, c.restarts)
		if c.problem == "" {
			require.NoError(t, err)
		} else {
			require.EqualError(t, err, c.problem)
		}
	}
}
