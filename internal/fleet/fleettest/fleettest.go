// Package fleettest starts a fake AWS endpoint and a simulated fleet for a
// test, and stops both when it ends.
package fleettest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
)

// Region is the region of every test fleet.
const Region = "us-east-1"

// New starts a fake AWS endpoint and an empty fleet on it.
func New(t testing.TB) *fleet.Fleet {
	t.Helper()
	if testing.Short() {
		t.Skip("starts sshd boxes (skipped with -short)")
	}
	aws, err := fakeaws.Start(Region)
	require.NoError(t, err)
	t.Cleanup(func() { _ = aws.Close() })
	f, err := fleet.New(aws)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// Listing lists the entries under dir (a box's plugin root, say), relative
// and in walk order, to show that nothing was written there.
func Listing(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rel)
		return nil
	}))
	return out
}

// CheckRestarts judges a box's own record against the restart promise:
// every change (a swap or a removal) is followed by exactly one restart,
// and every restart follows at least one change made since the one before.
func CheckRestarts(events []fleet.Event) error {
	var pending []fleet.Event
	for _, e := range events {
		if e.Kind != fleet.Restart {
			pending = append(pending, e)
			continue
		}
		if len(pending) == 0 {
			return fmt.Errorf("restart at %s follows no change since the previous restart", e.At.Format("15:04:05.000"))
		}
		pending = nil
	}
	if len(pending) > 0 {
		return fmt.Errorf("no restart after %v", pending)
	}
	return nil
}
