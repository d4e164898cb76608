package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
)

func track(t *testing.T, s *store.Store, ws, name, version string) {
	t.Helper()
	require.NoError(t, s.RecordTracking(ctx(t), store.Tracking{WorkspaceID: ws, PluginName: name, Version: version, InstalledVia: "boot", WorkflowID: "wf", RunID: "r"}))
}

func plugins(names ...string) []reconcile.Plugin {
	out := make([]reconcile.Plugin, len(names))
	for i, n := range names {
		out[i] = reconcile.Plugin{Name: n, Version: "1"}
	}
	return out
}

func TestDeclareKeepsGenerations(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	for _, n := range []string{"a", "b", "c", "d"} {
		track(t, s, "ws-1", n, "1")
	}
	steps := []struct {
		desc       string
		in         reconcile.DeclareInput
		plugins    []reconcile.Plugin
		generation int64
		undeclared []reconcile.Plugin
	}{
		{"first declaration", reconcile.DeclareInput{Plugins: plugins("d", "c", "b", "a")}, plugins("a", "b", "c", "d"), 1, nil},
		{"the same again", reconcile.DeclareInput{Plugins: plugins("a", "b", "c", "d")}, plugins("a", "b", "c", "d"), 1, nil},
		{"a narrower one adds nothing", reconcile.DeclareInput{Plugins: plugins("a")}, plugins("a", "b", "c", "d"), 1, nil},
		{"a dry run with prune", reconcile.DeclareInput{Plugins: plugins("a", "b", "c"), Prune: true, DryRun: true}, plugins("a", "b", "c"), 2, plugins("d")},
		{"nothing was written", reconcile.DeclareInput{Plugins: plugins("a")}, plugins("a", "b", "c", "d"), 1, nil},
		{"prune", reconcile.DeclareInput{Plugins: plugins("a", "b", "c"), Prune: true}, plugins("a", "b", "c"), 2, plugins("d")},
		{"converge keeps the set", reconcile.DeclareInput{Plugins: plugins("a", "b", "c", "d", "e"), Converge: true}, plugins("a", "b", "c"), 2, plugins("d")},
		{"an addition", reconcile.DeclareInput{Plugins: []reconcile.Plugin{{Name: "a", Version: "2"}}}, []reconcile.Plugin{{Name: "a", Version: "2"}, {Name: "b", Version: "1"}, {Name: "c", Version: "1"}}, 3, plugins("d")},
	}
	for _, st := range steps {
		st.in.WorkspaceID = "ws-1"
		d, undeclared, err := s.Declare(ctx(t), st.in, "reconcile:ws-1", "run")
		require.NoError(t, err, st.desc)
		require.Equal(t, st.plugins, d.Plugins, st.desc)
		require.Equal(t, st.generation, d.Generation, st.desc)
		require.Equal(t, st.undeclared, undeclared, st.desc)
	}
	d, err := s.Declaration(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, "reconcile:ws-1", d.DeclaredByWorkflowID)
	require.True(t, d.Behind())

	require.NoError(t, s.ForgetTracking(ctx(t), "ws-1", "d"))
	require.NoError(t, s.ForgetTracking(ctx(t), "ws-1", "d"), "forgetting twice is a no-op")
	_, undeclared, err := s.Declare(ctx(t), reconcile.DeclareInput{WorkspaceID: "ws-1", Converge: true}, "wf", "r")
	require.NoError(t, err)
	require.Empty(t, undeclared)
}

func TestDeclareOfAnUnknownWorkspaceFails(t *testing.T) {
	s := open(t)
	_, _, err := s.Declare(ctx(t), reconcile.DeclareInput{WorkspaceID: "nope", Plugins: plugins("a")}, "wf", "r")
	require.Error(t, err)
	_, err = s.Declaration(ctx(t), "nope")
	require.ErrorIs(t, err, store.ErrNotFound)
}

// Two attempts of one declaration at once (a timed-out attempt and its
// retry) leave one generation.
func TestDeclareRacingAttemptsLeaveOneGeneration(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	// Rounds of attempts released at once, each round's declaration new.
	for round := range 10 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, _, errs[i] = s.Declare(context.Background(), reconcile.DeclareInput{WorkspaceID: "ws-1", Plugins: plugins("a", fmt.Sprint("b", round))}, "wf", "r")
			}()
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		d, err := s.Declaration(ctx(t), "ws-1")
		require.NoError(t, err)
		require.Equal(t, int64(round+1), d.Generation, "one generation per declaration")
	}
}

func TestObserveNeverGoesBackNorAhead(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	_, _, err := s.Declare(ctx(t), reconcile.DeclareInput{WorkspaceID: "ws-1", Plugins: plugins("a")}, "wf", "r")
	require.NoError(t, err)
	_, _, err = s.Declare(ctx(t), reconcile.DeclareInput{WorkspaceID: "ws-1", Plugins: plugins("b")}, "wf", "r")
	require.NoError(t, err)
	require.NoError(t, s.Observe(ctx(t), "ws-1", 3), "a generation not yet declared is not observed")
	d, _ := s.Declaration(ctx(t), "ws-1")
	require.Zero(t, d.ObservedGeneration)
	require.NoError(t, s.Observe(ctx(t), "ws-1", 2))
	require.NoError(t, s.Observe(ctx(t), "ws-1", 1), "an older run's observation comes late")
	d, _ = s.Declaration(ctx(t), "ws-1")
	require.Equal(t, int64(2), d.ObservedGeneration)
	require.NotNil(t, d.ObservedAt)
	require.False(t, d.Behind())
}

// The sweep lists workspaces by their declaration: one declared with no
// tracking row yet (its first delivery failed) is swept; one tracked
// before declarations were kept is swept by its rows.
func TestActiveWorkspacesFollowDeclarations(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef1")
	addWorkspace(t, s, "ws-2", "i-0123456789abcdef2")
	addWorkspace(t, s, "ws-3", "i-0123456789abcdef3")
	_, _, err := s.Declare(ctx(t), reconcile.DeclareInput{WorkspaceID: "ws-1", Plugins: plugins("x")}, "wf", "r")
	require.NoError(t, err)
	track(t, s, "ws-2", "y", "2")
	got, err := s.ActiveWorkspaces(ctx(t), "", 10)
	require.NoError(t, err)
	require.Equal(t, []store.Declared{
		{WorkspaceID: "ws-1", Plugins: plugins("x")},
		{WorkspaceID: "ws-2", Plugins: []reconcile.Plugin{{Name: "y", Version: "2"}}},
	}, got)
}

// Workspaces tracked before declarations were kept are declared by their
// rows, reconciled in full; the way back down works.
func TestDeclarationsMigrationSeedsFromTracking(t *testing.T) {
	dsn := pgcluster.NewTestDatabase(t)
	_, err := migrations.ApplyTo(ctx(t), dsn, 2)
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx(t), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(ctx(t), `
insert into workspaces (id, instance_id, region) values ('ws-1', 'i-0123456789abcdef0', 'us-east-1'), ('ws-2', 'i-0123456789abcdef1', 'us-east-1');
insert into workspace_plugins (workspace_id, plugin_name, version, installed_via, last_workflow_id, last_run_id) values
  ('ws-1', 'b', '2.0.0', 'boot', 'wf', 'r'), ('ws-1', 'a', '1.0.0', 'reconcile', 'wf', 'r')`)
	require.NoError(t, err)
	v, err := migrations.Apply(ctx(t), dsn)
	require.NoError(t, err)
	require.Equal(t, migrations.Latest(), v)
	s, err := store.Open(ctx(t), dsn)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	d, err := s.Declaration(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, []reconcile.Plugin{{Name: "a", Version: "1.0.0"}, {Name: "b", Version: "2.0.0"}}, d.Plugins)
	require.Equal(t, int64(1), d.Generation)
	require.Equal(t, int64(1), d.ObservedGeneration)
	_, err = s.Declaration(ctx(t), "ws-2")
	require.True(t, errors.Is(err, store.ErrNotFound), "nothing tracked, nothing declared")

	v, err = migrations.ApplyTo(ctx(t), dsn, 2)
	require.NoError(t, err)
	require.Equal(t, int32(2), v)
}

// Only what a Prune declaration dropped is removed: not a plugin tracked
// by a worker that kept no declaration, and not the rest of the tracking
// rows of a workspace that has none stored.
func TestOnlyWhatAPruneDroppedIsOwedARemoval(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-2", "i-0123456789abcdef1")
	track(t, s, "ws-2", "a", "1")
	track(t, s, "ws-2", "b", "1")
	untracked := func(name string) reconcile.Plugin { return reconcile.Plugin{Name: name} }
	steps := []struct {
		desc       string
		before     func()
		in         reconcile.DeclareInput
		plugins    []reconcile.Plugin
		undeclared []reconcile.Plugin
	}{
		{"none stored: the tracking rows stand for it", nil, reconcile.DeclareInput{Plugins: plugins("c")}, plugins("a", "b", "c"), nil},
		{"tracked and not declared is left alone", func() { track(t, s, "ws-2", "x", "1") }, reconcile.DeclareInput{Plugins: plugins("a")}, plugins("a", "b", "c"), nil},
		{"Prune: the declared, the tracked and the untracked it drops", nil, reconcile.DeclareInput{Plugins: plugins("a", "e"), Prune: true}, plugins("a", "e"), []reconcile.Plugin{{Name: "b", Version: "1"}, untracked("c"), {Name: "x", Version: "1"}}},
		{"a later Prune adds what it drops", nil, reconcile.DeclareInput{Plugins: plugins("a"), Prune: true}, plugins("a"), []reconcile.Plugin{{Name: "b", Version: "1"}, untracked("c"), untracked("e"), {Name: "x", Version: "1"}}},
		{"declared again: no longer owed", nil, reconcile.DeclareInput{Plugins: plugins("c")}, plugins("a", "c"), []reconcile.Plugin{{Name: "b", Version: "1"}, untracked("e"), {Name: "x", Version: "1"}}},
	}
	for _, st := range steps {
		if st.before != nil {
			st.before()
		}
		st.in.WorkspaceID = "ws-2"
		d, undeclared, err := s.Declare(ctx(t), st.in, "reconcile:ws-2", "run")
		require.NoError(t, err, st.desc)
		require.Equal(t, st.plugins, d.Plugins, st.desc)
		require.Equal(t, st.undeclared, undeclared, st.desc)
	}
	for _, n := range []string{"b", "e", "x"} {
		require.NoError(t, s.ForgetTracking(ctx(t), "ws-2", n))
	}
	d, err := s.Declaration(ctx(t), "ws-2")
	require.NoError(t, err)
	require.Empty(t, d.Removals, "every owed removal done")
	require.True(t, d.Behind(), "until the generation is observed")
	require.NoError(t, s.Observe(ctx(t), "ws-2", d.Generation))
	d, err = s.Declaration(ctx(t), "ws-2")
	require.NoError(t, err)
	require.False(t, d.Behind())
}
