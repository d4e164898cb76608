package service_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service/servicetest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Desired state on the real stack: the declaration is stored, a Prune
// declaration removes what it no longer names, the sweep converges to the
// stored declarations. The box's own record judges the restarts.

func kinds(events []fleet.Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, strings.TrimSpace(string(e.Kind)+" "+e.Plugin))
	}
	return out
}

func declarationOf(t *testing.T, s *servicetest.Stack, ws string) store.Declaration {
	t.Helper()
	d, err := s.Service.Store.Declaration(ctx(t), ws)
	require.NoError(t, err)
	return d
}

func pluginDir(box *fleet.Box, name string) string { return filepath.Dir(box.ManifestPath(name)) }

func TestPruneRemovesWhatIsNoLongerDeclared(t *testing.T) {
	s := servicetest.New(t)
	const ws = "ws-prune"
	abcd, abc := declared[:4], declared[:3]
	d := abcd[3].Name
	box := s.Box(ws, all("sub-agent.planner"))

	res := s.Reconcile(ws, abcd)
	require.Equal(t, 4, res.Count(workflows.ActionRecorded))
	require.Len(t, s.Rows(ws), 4)
	require.Equal(t, int64(1), declarationOf(t, s, ws).Generation)

	// Without Prune a narrower declaration adds nothing and removes nothing.
	res = s.Reconcile(ws, abc)
	require.Equal(t, 4, res.Count(workflows.ActionRecorded), "the stored set is reconciled")
	require.Contains(t, s.Rows(ws), d)
	require.FileExists(t, box.ManifestPath(d))
	require.Equal(t, int64(1), declarationOf(t, s, ws).Generation, "the stored set did not change")

	// A plan with Prune says would-remove and touches nothing.
	plan, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: abc, Prune: true, DryRun: true})
	require.NoError(t, err)
	res, err = workflows.Result(ctx(t), plan)
	require.NoError(t, err)
	require.Equal(t, 1, res.Count(workflows.ActionWouldRemove))
	require.True(t, res.Restart.Needed, "the plan says a restart would follow")
	require.FileExists(t, box.ManifestPath(d))
	require.Contains(t, s.Rows(ws), d)
	require.Equal(t, int64(1), declarationOf(t, s, ws).Generation, "a plan writes no declaration")

	// Prune with nothing declared is refused before anything is written.
	_, err = workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: ws, Prune: true})
	require.ErrorContains(t, err, "Prune: refused with no Plugins declared")
	require.Len(t, declarationOf(t, s, ws).Plugins, 4)
	require.Len(t, s.Rows(ws), 4)

	// Prune: d leaves the box and the rows, with one restart after it.
	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: abc, Prune: true})
	require.NoError(t, err)
	res, err = workflows.Result(ctx(t), run)
	require.NoError(t, err)
	require.Equal(t, 1, res.Count(workflows.ActionRemoved))
	require.Equal(t, 3, res.Count(workflows.ActionRecorded))
	require.NoDirExists(t, pluginDir(box, d))
	require.NotContains(t, s.Rows(ws), d)
	require.Len(t, s.Rows(ws), 3)
	require.Equal(t, 1, box.Restarts())
	require.Equal(t, []string{"removal " + d, "restart"}, kinds(requirePromise(t, box)))
	requireNothingPending(t, s, ws)
	entries, err := os.ReadDir(filepath.Dir(pluginDir(box, d)))
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, strings.HasPrefix(e.Name(), ".removing"), "nothing left aside: %s", e.Name())
	}
	got := declarationOf(t, s, ws)
	require.Equal(t, int64(2), got.Generation)
	require.Equal(t, got.Generation, got.ObservedGeneration, "reconciled in full")
	require.Len(t, got.Plugins, 3)
	require.Equal(t, run.GetID(), got.DeclaredByWorkflowID)
}

func TestRemovalAndDeliveryShareOneRestart(t *testing.T) {
	s := servicetest.New(t)
	const ws = "ws-swap"
	keep, drop, add := declared[0], declared[3], declared[4]
	box := s.Box(ws, map[string]string{keep.Name: keep.Version, drop.Name: drop.Version})
	s.Reconcile(ws, []workflows.Plugin{keep, drop})
	require.Zero(t, box.Restarts())

	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: []workflows.Plugin{keep, add}, Prune: true})
	require.NoError(t, err)
	res, err := workflows.Result(ctx(t), run)
	require.NoError(t, err)
	require.Equal(t, 1, res.Count(workflows.ActionRemoved))
	require.Equal(t, 1, res.Count(workflows.ActionDelivered))
	require.Equal(t, 1, box.Restarts(), "one restart for the removal and the delivery")
	require.Contains(t, res.Restart.Reason, "1 plugin(s) delivered, 1 removed")
	events := kinds(requirePromise(t, box))
	require.Equal(t, "restart", events[len(events)-1])
	require.ElementsMatch(t, []string{"removal " + drop.Name, "swap " + add.Name, "restart"}, events)
	require.NoDirExists(t, pluginDir(box, drop.Name))
	require.FileExists(t, box.ManifestPath(add.Name))
	rows := s.Rows(ws)
	require.Len(t, rows, 2)
	require.Contains(t, rows, add.Name)
	requireNothingPending(t, s, ws)
}

// A delivery that failed (the bundle not yet published) and a plugin
// deleted by hand from its box are healed by the next sweep, because the
// sweep converges to the stored declarations; a plugin on the box that
// nobody declared is left as it is.
func TestSweepConvergesToTheStoredDeclarations(t *testing.T) {
	s := servicetest.New(t)
	late := workflows.Plugin{Name: "late-skill", Version: "1.0.0"}

	// ws-late: every plugin on the box but late-skill, which the catalog
	// does not have yet.
	lateBox := s.Box("ws-late", all())
	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-late", Plugins: append(append([]workflows.Plugin(nil), declared...), late)})
	require.NoError(t, err)
	res, err := workflows.Result(ctx(t), run)
	require.Error(t, err, "late-skill is not in the catalog")
	require.Equal(t, 1, res.Count(workflows.ActionFailed))
	require.NotContains(t, s.Rows("ws-late"), late.Name)
	require.True(t, declarationOf(t, s, "ws-late").Behind(), "the declaration is not reconciled in full")

	// ws-only-late: a declaration and no tracking row at all.
	onlyBox := s.Box("ws-only-late", nil)
	run, err = workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-only-late", Plugins: []workflows.Plugin{late}})
	require.NoError(t, err)
	_, err = workflows.Result(ctx(t), run)
	require.Error(t, err)
	require.Empty(t, s.Rows("ws-only-late"))

	// ws-hand: code-review declared and deleted by hand; slack-notify on the
	// box, never declared, deleted by hand too.
	kept, lost, stray := declared[0], declared[2], declared[3]
	handBox := s.Box("ws-hand", map[string]string{kept.Name: kept.Version, lost.Name: lost.Version, stray.Name: stray.Version})
	s.Reconcile("ws-hand", []workflows.Plugin{kept, lost})
	require.NoError(t, os.RemoveAll(pluginDir(handBox, lost.Name)))
	require.NoError(t, os.RemoveAll(pluginDir(handBox, stray.Name)))

	require.NoError(t, catalog.Publish(s.CatalogDir, late.Name, late.Version, map[string]string{"bin/run": "#!/bin/sh\necho late\n"}))
	sweep, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{})
	require.NoError(t, err)
	var rep workflows.SweepReport
	require.NoError(t, sweep.Get(ctx(t), &rep))
	t.Logf("sweep: %s", rep)

	require.Equal(t, 3, rep.Checked, "three workspaces declared")
	require.Equal(t, 3, rep.Missing)
	require.Equal(t, 3, rep.Delivered)
	require.Equal(t, 3, rep.Restarts)
	require.Zero(t, rep.Removed)
	require.Zero(t, rep.Failures, "%v", rep.Failed)

	for ws, box := range map[string]*fleet.Box{"ws-late": lateBox, "ws-only-late": onlyBox, "ws-hand": handBox} {
		require.Equal(t, 1, box.Restarts(), ws)
		requirePromise(t, box)
		requireNothingPending(t, s, ws)
		d := declarationOf(t, s, ws)
		require.False(t, d.Behind(), "%s: generation %d observed %d", ws, d.Generation, d.ObservedGeneration)
	}
	require.FileExists(t, lateBox.ManifestPath(late.Name))
	require.Contains(t, s.Rows("ws-late"), late.Name)
	require.Contains(t, s.Rows("ws-only-late"), late.Name)
	require.FileExists(t, handBox.ManifestPath(lost.Name), "a declared plugin deleted by hand is delivered again")
	require.NoDirExists(t, pluginDir(handBox, stray.Name), "an undeclared one is not")
	require.NotContains(t, s.Rows("ws-hand"), stray.Name)
}
