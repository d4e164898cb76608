package service_test

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle/bundletest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service/servicetest"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// The restart promise, each case as it was reproduced: every change swapped
// onto a box is followed by exactly one restart after it, and no restart
// happens without a change. The box's own record (fleet events) is the
// judge.

func withVersion(ps []workflows.Plugin, name, version string) []workflows.Plugin {
	out := append([]workflows.Plugin(nil), ps...)
	for i := range out {
		if out[i].Name == name {
			out[i].Version = version
		}
	}
	return out
}

// requirePromise checks the box's record against the promise.
func requirePromise(t *testing.T, box *fleet.Box) []fleet.Event {
	t.Helper()
	events, err := box.Events()
	require.NoError(t, err)
	require.NoError(t, fleettest.CheckRestarts(events), "box record: %v", events)
	return events
}

func requireNothingPending(t *testing.T, s *servicetest.Stack, ws string) {
	t.Helper()
	w, err := s.Service.Store.Workspace(ctx(t), ws)
	require.NoError(t, err)
	require.Nil(t, w.RestartPendingSince, "%s: nothing left pending", ws)
	st, err := s.Service.Store.RestartState(ctx(t), ws)
	require.NoError(t, err)
	require.Empty(t, st.Marks, "%s: no restart mark left", ws)
}

func TestDeclarationDuringRestartGetsItsOwnRestart(t *testing.T) {
	s := servicetest.New(t)
	box := s.Box("ws-round", all("code-review"))
	require.NoError(t, box.SetRestartDelay(3*time.Second))
	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-round", Plugins: declared})
	require.NoError(t, err)
	require.Eventually(t, box.Restarting, time.Minute, 5*time.Millisecond, "the first restart never began")

	upgrade := withVersion(declared, "github-tools", "1.3.0")
	again, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-round", Plugins: upgrade})
	require.NoError(t, err)
	require.Equal(t, run.GetRunID(), again.GetRunID(), "the declaration joined the running reconcile")
	res, err := workflows.Result(ctx(t), run)
	require.NoError(t, err)

	require.Equal(t, 2, box.Restarts(), "one restart per round")
	events := requirePromise(t, box)
	var kinds []string
	for _, e := range events {
		kinds = append(kinds, strings.TrimSpace(string(e.Kind)+" "+e.Plugin))
	}
	require.Equal(t, []string{"swap code-review", "restart", "removal github-tools", "swap github-tools", "restart"}, kinds, "an upgrade renames the old version away, then the new one in")
	requireNothingPending(t, s, "ws-round")
	data, err := os.ReadFile(box.ManifestPath("github-tools"))
	require.NoError(t, err)
	require.Contains(t, string(data), "version: 1.3.0")
	require.Equal(t, "1.3.0", s.Rows("ws-round")["github-tools"].Version)

	require.Len(t, res.Restarts, 2, "the result reports both rounds")
	for _, r := range res.Restarts {
		require.True(t, r.Done)
	}
	ledger, err := s.Service.Store.Restarts(ctx(t), "ws-round")
	require.NoError(t, err)
	require.Len(t, ledger, 2, "each round has its own ledger row")
	for _, r := range ledger {
		require.NotNil(t, r.CompletedAt)
	}
	require.NotEqual(t, ledger[0].RestartID, ledger[1].RestartID)
}

func TestLargeDeclarationCompletes(t *testing.T) {
	s := servicetest.New(t)
	var plugins []workflows.Plugin
	boot := map[string]string{}
	for i := range workflows.MaxPlugins {
		p := workflows.Plugin{Name: fmt.Sprintf("team-skill-%03d", i), Version: "1.0.0"}
		require.NoError(t, catalog.Publish(s.CatalogDir, p.Name, p.Version, nil))
		plugins = append(plugins, p)
		boot[p.Name] = p.Version
	}
	box := s.Box("ws-large", boot)
	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-large", Plugins: plugins, MaxParallel: 32})
	require.NoError(t, err)
	res, err := workflows.Result(ctx(t), run)
	require.NoError(t, err)
	require.Equal(t, workflows.MaxPlugins, res.Count(workflows.ActionRecorded))
	require.Len(t, s.Rows("ws-large"), workflows.MaxPlugins)
	require.Equal(t, 0, box.Restarts())
}

func TestDryRunSweepDoesNotCaptureATrigger(t *testing.T) {
	s := servicetest.New(t)
	boxes := fleetOf(t, s, "ws-plan", 1, func(int) bool { return true })
	box := boxes[0]
	box.SetLatency(400 * time.Millisecond) // keeps the plan's probes busy
	sweep, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{DryRun: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		d, err := s.Client.DescribeWorkflowExecution(ctx(t), sweep.GetID(), sweep.GetRunID())
		return err == nil && len(d.GetPendingChildren()) > 0
	}, time.Minute, 10*time.Millisecond, "the plan never started")

	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-plan-000", Plugins: sweepPlugins})
	require.NoError(t, err)
	res, err := workflows.Result(ctx(t), run)
	require.NoError(t, err)
	require.False(t, res.DryRun, "the trigger ran for real, not as part of the plan")
	require.Equal(t, 1, res.Count(workflows.ActionDelivered))
	require.Equal(t, 1, box.Restarts())
	var rep workflows.SweepReport
	require.NoError(t, sweep.Get(ctx(t), &rep))
	require.Equal(t, 1, rep.Checked)
}

// resetPoint is the workflow task that read the restart facts' result: the
// run reset there decides the restart again from those same facts.
func resetPoint(t *testing.T, c client.Client, id, runID string) int64 {
	t.Helper()
	iter := c.GetWorkflowHistory(ctx(t), id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var factsScheduled int64
	factsDone := false
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		switch {
		case ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName() == "ReadRestartFacts":
			factsScheduled = ev.GetEventId()
		case factsScheduled != 0 && ev.GetActivityTaskCompletedEventAttributes().GetScheduledEventId() == factsScheduled:
			factsDone = true
		case factsDone && ev.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
			return ev.GetEventId()
		}
	}
	t.Fatal("no workflow task after the restart facts")
	return 0
}

func TestResetAfterRestartDoesNotRestartAgain(t *testing.T) {
	s := servicetest.New(t)
	box := s.Box("ws-reset", all("slack-notify"))
	id := workflows.ReconcileWorkflowID("ws-reset")
	first := s.Reconcile("ws-reset", declared)
	require.True(t, first.Restart.Done)
	require.Equal(t, 1, box.Restarts())

	d, err := s.Client.DescribeWorkflowExecution(ctx(t), id, "")
	require.NoError(t, err)
	runID := d.GetWorkflowExecutionInfo().GetExecution().GetRunId()
	reset, err := s.Client.ResetWorkflowExecution(ctx(t), &workflowservice.ResetWorkflowExecutionRequest{
		Namespace:                 s.Namespace,
		WorkflowExecution:         &commonpb.WorkflowExecution{WorkflowId: id, RunId: runID},
		Reason:                    "operator reset to the restart decision",
		WorkflowTaskFinishEventId: resetPoint(t, s.Client, id, runID),
		RequestId:                 "reset-" + runID,
	})
	require.NoError(t, err)
	res, err := workflows.Result(ctx(t), s.Client.GetWorkflow(ctx(t), id, reset.GetRunId()))
	require.NoError(t, err)
	require.Equal(t, 1, box.Restarts(), "the reset run found the restart already done")
	require.False(t, res.Restart.Done)
	requirePromise(t, box)
	requireNothingPending(t, s, "ws-reset")
}

func TestTerminatedSweepChildReturnsItsPermit(t *testing.T) {
	s := servicetest.New(t)
	boxes := fleetOf(t, s, "ws-permit", 3, func(int) bool { return true })
	for _, b := range boxes {
		require.NoError(t, b.SetRestartDelay(3*time.Second))
	}
	_, err := workflows.EnsureSchedule(ctx(t), s.Client, time.Hour, workflows.SweepInput{MaxConcurrency: 3, MaxRestartsInFlight: 1, MaxPerRun: 2})
	require.NoError(t, err)
	h := s.Client.ScheduleClient().GetHandle(ctx(t), workflows.SweepScheduleID)
	require.NoError(t, h.Trigger(ctx(t), client.ScheduleTriggerOptions{}))

	// Terminate the reconcile that holds the only permit, mid-restart.
	var holder int
	require.Eventually(t, func() bool {
		for i, b := range boxes {
			if b.Restarting() {
				holder = i
				return true
			}
		}
		return false
	}, time.Minute, 5*time.Millisecond, "no restart began")
	require.NoError(t, s.Client.TerminateWorkflow(ctx(t), workflows.ReconcileWorkflowID(fmt.Sprintf("ws-permit-%03d", holder)), "", "operator test"))

	// A scheduled sweep's workflow ID carries its scheduled time.
	sweepRun := func(n int) string {
		var id string
		require.Eventually(t, func() bool {
			d, err := h.Describe(ctx(t))
			if err != nil || len(d.Info.RecentActions) < n {
				return false
			}
			id = d.Info.RecentActions[n-1].StartWorkflowResult.WorkflowID
			return true
		}, 30*time.Second, 50*time.Millisecond, "scheduled sweep %d did not start", n)
		return id
	}
	var rep workflows.SweepReport
	wctx, cancel := contextWithTimeout(t, 2*time.Minute)
	defer cancel()
	require.NoError(t, s.Client.GetWorkflow(wctx, sweepRun(1), "").Get(wctx, &rep), "the sweep finishes")
	for i, b := range boxes {
		require.Eventually(t, func() bool { return b.Restarts() == 1 }, 30*time.Second, 50*time.Millisecond, "box %d", i)
	}

	// The next scheduled sweep runs (it is not skipped as overlapping) and
	// finds nothing to do but finish the terminated run's restart record.
	require.NoError(t, h.Trigger(ctx(t), client.ScheduleTriggerOptions{}))
	var next workflows.SweepReport
	require.NoError(t, s.Client.GetWorkflow(wctx, sweepRun(2), "").Get(wctx, &next))
	require.Equal(t, 3, next.Checked)
	for i, b := range boxes {
		require.Equal(t, 1, b.Restarts(), "box %d restarted once in all", i)
		requirePromise(t, b)
	}
}

func TestEditedManifestIsRepairedWithOneRestart(t *testing.T) {
	s := servicetest.New(t)
	box := s.Box("ws-edited", all("code-review"))
	s.Reconcile("ws-edited", declared)
	require.Equal(t, 1, box.Restarts())

	// Someone edits the delivered plugin's manifest on the box; its
	// .bundle-digest still names the catalog's bundle.
	require.NoError(t, os.WriteFile(box.ManifestPath("code-review"), []byte("name: code-review\nversion: broken\n"), 0o644))
	res := s.Reconcile("ws-edited", declared)
	require.Equal(t, 1, res.Count(workflows.ActionDelivered), "repaired")
	require.Equal(t, 2, box.Restarts(), "one restart for the repair")
	data, err := os.ReadFile(box.ManifestPath("code-review"))
	require.NoError(t, err)
	require.Contains(t, string(data), "version: 2.0.0")

	again := s.Reconcile("ws-edited", declared)
	require.Equal(t, 0, again.Count(workflows.ActionDelivered))
	require.Equal(t, 2, box.Restarts(), "no loop")
	requirePromise(t, box)
	requireNothingPending(t, s, "ws-edited")
}

func TestBundleWithAWrongManifestVersionIsRejected(t *testing.T) {
	s := servicetest.New(t)
	// The catalog's 2.0.0 bundle holds a manifest that says 1.0.0.
	raw := bundletest.Raw(t, "mislabelled", tar.Header{Name: "bin/run", Typeflag: tar.TypeReg, Mode: 0o755, Size: 8})
	require.NoError(t, os.MkdirAll(filepath.Join(s.CatalogDir, "mislabelled"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(s.CatalogDir, "mislabelled", "2.0.0.tar.gz"), raw, 0o644))
	box := s.Box("ws-mislabelled", all())
	plugins := append(append([]workflows.Plugin(nil), declared...), workflows.Plugin{Name: "mislabelled", Version: "2.0.0"})
	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-mislabelled", Plugins: plugins})
	require.NoError(t, err)
	res, err := workflows.Result(ctx(t), run)
	require.ErrorContains(t, err, "mislabelled")
	require.Equal(t, []string{"mislabelled"}, res.Failed)
	for _, p := range res.Plugins {
		if p.Name == "mislabelled" {
			require.Contains(t, p.Error, "BundleRejected")
			require.Contains(t, p.Error, "1.0.0")
		}
	}
	_, err = os.Stat(filepath.Join(box.PluginRoot, "mislabelled"))
	require.True(t, os.IsNotExist(err), "nothing installed")
	require.Equal(t, 0, box.Restarts())
	requireNothingPending(t, s, "ws-mislabelled")
}

func TestDeclaredDigestMustMatchTheCatalog(t *testing.T) {
	s := servicetest.New(t)
	box := s.Box("ws-digest", all("mcp-postgres"))
	plugins := append([]workflows.Plugin(nil), declared...)
	for i := range plugins {
		if plugins[i].Name == "mcp-postgres" {
			plugins[i].Digest = "sha256:" + strings.Repeat("0", 64)
		}
	}
	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-digest", Plugins: plugins})
	require.NoError(t, err)
	start := time.Now()
	res, err := workflows.Result(ctx(t), run)
	require.Error(t, err)
	require.Less(t, time.Since(start), 30*time.Second, "not retried")
	require.Equal(t, []string{"mcp-postgres"}, res.Failed)
	var failure string
	for _, p := range res.Plugins {
		if p.Name == "mcp-postgres" {
			failure = p.Error
		}
	}
	var app *temporal.ApplicationError
	require.ErrorAs(t, err, &app)
	require.Contains(t, failure, "DigestMismatch")
	require.Contains(t, failure, "sha256:"+strings.Repeat("0", 64))
	_, err = os.Stat(filepath.Join(box.PluginRoot, "mcp-postgres"))
	require.True(t, os.IsNotExist(err), "nothing installed")
	require.Equal(t, 0, box.Restarts())
	requireNothingPending(t, s, "ws-digest")
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx(t), d)
}

// A restart command that cannot work (missing: exit 127) fails the run at
// once, naming it, instead of being retried for two hours; the restart
// stays owed, and is done once the box is mended.
func TestRestartCommandThatCannotWorkFailsFast(t *testing.T) {
	s := servicetest.New(t)
	box := s.Box("ws-127", all("code-review"))
	require.NoError(t, box.FailRestarts(100, 127))
	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-127", Plugins: declared})
	require.NoError(t, err)
	start := time.Now()
	_, err = workflows.Result(ctx(t), run)
	require.ErrorContains(t, err, "RestartFailed")
	require.ErrorContains(t, err, "exited 127")
	require.Less(t, time.Since(start), 30*time.Second, "not retried for hours")
	require.Equal(t, 0, box.Restarts())
	w, err := s.Service.Store.Workspace(ctx(t), "ws-127")
	require.NoError(t, err)
	require.NotNil(t, w.RestartPendingSince, "the restart stays owed")

	require.NoError(t, box.FailRestarts(0, 0))
	again := s.Reconcile("ws-127", declared)
	require.True(t, again.Restart.Done)
	require.Equal(t, 1, box.Restarts())
	requirePromise(t, box)
	requireNothingPending(t, s, "ws-127")
}
