package service_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service/servicetest"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

func TestMain(m *testing.M) { pgcluster.TestMain(m) }

var (
	declared = servicetest.Declared
	all      = servicetest.All
	ctx      = servicetest.Ctx
)

func TestReconcileEndToEnd(t *testing.T) {
	s := servicetest.New(t)

	t.Run("a: all boot-installed: record only, no restart, one key push", func(t *testing.T) {
		counters := s.Counters(t)
		box := s.Box("ws-a", all())
		res := s.Reconcile("ws-a", declared)
		require.Equal(t, 5, res.Count(workflows.ActionRecorded))
		require.Equal(t, 0, res.Count(workflows.ActionDelivered))
		require.False(t, res.Restart.Done)
		rows := s.Rows("ws-a")
		require.Len(t, rows, 5)
		for _, r := range rows {
			require.Equal(t, "boot", r.InstalledVia, r.PluginName)
			require.Nil(t, r.DeliveredAt)
		}
		require.Equal(t, 0, box.Restarts())
		require.Equal(t, 1, s.Fleet.AWS.KeyPushes(box.InstanceID))
		require.Equal(t, 1, box.Logins())
		w, err := s.Service.Store.Workspace(ctx(t), "ws-a")
		require.NoError(t, err)
		require.Equal(t, box.HostKey, w.HostKey, "host key trusted on first use and pinned")
		counters.Require(t, box, map[string]float64{
			`plugin_probe_total{result="present"}`:                  5,
			`plugin_probe_total{result="absent"}`:                   0,
			`plugin_delivery_total`:                                 0,
			`box_restart_total`:                                     0,
			`box_restart_skipped_total{reason="nothing_delivered"}`: 1,
		})
	})

	t.Run("b+c: two missing: deliver two, one restart; again: nothing", func(t *testing.T) {
		counters := s.Counters(t)
		box := s.Box("ws-b", all("mcp-postgres", "slack-notify"))
		res := s.Reconcile("ws-b", declared)
		require.Equal(t, 3, res.Count(workflows.ActionRecorded))
		require.Equal(t, 2, res.Count(workflows.ActionDelivered))
		require.True(t, res.Restart.Done)
		require.Equal(t, 1, box.Restarts())
		for _, name := range []string{"mcp-postgres", "slack-notify"} {
			b, err := s.Catalog.Bundle(ctx(t), name, all()[name])
			require.NoError(t, err)
			onBox, err := os.ReadFile(filepath.Join(box.PluginRoot, name, ".bundle-digest"))
			require.NoError(t, err)
			require.Equal(t, b.Digest, strings.TrimSpace(string(onBox)), "bytes on the box are the catalog's")
			script, err := os.ReadFile(filepath.Join(box.PluginRoot, name, "bin", "run"))
			require.NoError(t, err)
			require.Contains(t, string(script), name)
			require.Equal(t, "reconcile", s.Rows("ws-b")[name].InstalledVia)
		}
		w, err := s.Service.Store.Workspace(ctx(t), "ws-b")
		require.NoError(t, err)
		require.Nil(t, w.RestartPendingSince, "pending cleared after the verified restart")
		ledger, err := s.Service.Store.Restarts(ctx(t), "ws-b")
		require.NoError(t, err)
		require.Len(t, ledger, 1)
		require.Equal(t, box.Identity(), ledger[0].IdentityAfter)

		again := s.Reconcile("ws-b", declared)
		require.Equal(t, 5, again.Count(workflows.ActionRecorded))
		require.Equal(t, 0, again.Count(workflows.ActionDelivered))
		require.False(t, again.Restart.Done)
		require.Equal(t, 1, box.Restarts(), "no second restart")
		require.Equal(t, "reconcile", s.Rows("ws-b")["mcp-postgres"].InstalledVia, "still ours")
		counters.Require(t, box, map[string]float64{
			`plugin_probe_total{result="present"}`:                  8,
			`plugin_probe_total{result="absent"}`:                   2,
			`plugin_delivery_total`:                                 2,
			`box_restart_total{reason="delivered"}`:                 1,
			`box_restart_skipped_total{reason="nothing_delivered"}`: 1,
		})
	})

	t.Run("d: two triggers at once: one run, one restart", func(t *testing.T) {
		counters := s.Counters(t)
		box := s.Box("ws-d", all("code-review"))
		var wg sync.WaitGroup
		runs := make([]client.WorkflowRun, 2)
		for i := range runs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				runs[i], err = workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-d", Plugins: declared})
				require.NoError(t, err)
			}()
		}
		wg.Wait()
		require.Equal(t, runs[0].GetRunID(), runs[1].GetRunID(), "the second trigger joined the running reconcile")
		res, err := workflows.Result(ctx(t), runs[0])
		require.NoError(t, err)
		require.Equal(t, 1, res.Count(workflows.ActionDelivered))
		require.Equal(t, 1, box.Restarts())
		counters.Require(t, box, map[string]float64{
			`plugin_probe_total{result="present"}`:  4,
			`plugin_probe_total{result="absent"}`:   1,
			`plugin_delivery_total`:                 1,
			`box_restart_total{reason="delivered"}`: 1,
		})
	})

	t.Run("e: one version upgraded: one delivery, one restart", func(t *testing.T) {
		counters := s.Counters(t)
		box := s.Box("ws-e", all())
		s.Reconcile("ws-e", declared)
		require.Equal(t, 0, box.Restarts())
		upgraded := append([]workflows.Plugin(nil), declared...)
		upgraded[0].Version = "1.3.0"
		res := s.Reconcile("ws-e", upgraded)
		require.Equal(t, 1, res.Count(workflows.ActionDelivered))
		require.Equal(t, 4, res.Count(workflows.ActionRecorded))
		require.Equal(t, 1, box.Restarts())
		m, err := os.ReadFile(box.ManifestPath("github-tools"))
		require.NoError(t, err)
		require.Contains(t, string(m), "1.3.0")
		require.Equal(t, "1.3.0", s.Rows("ws-e")["github-tools"].Version)
		counters.Require(t, box, map[string]float64{
			`plugin_probe_total{result="present"}`:                  10,
			`plugin_delivery_total`:                                 1,
			`box_restart_total{reason="delivered"}`:                 1,
			`box_restart_skipped_total{reason="nothing_delivered"}`: 1,
		})
	})
}

func TestOperatorsEndToEnd(t *testing.T) {
	s := servicetest.New(t)

	t.Run("a burst of 10 triggers gives one run and one restart", func(t *testing.T) {
		box := s.Box("ws-burst", all("code-review", "slack-notify"))
		var wg sync.WaitGroup
		runIDs := make(chan string, 10)
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				plugins := declared
				if i%2 == 1 {
					plugins = declared[:3] // a narrower declaration joins too
				}
				run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-burst", Plugins: plugins})
				require.NoError(t, err)
				runIDs <- run.GetRunID()
			}()
		}
		wg.Wait()
		close(runIDs)
		ids := map[string]bool{}
		for id := range runIDs {
			ids[id] = true
		}
		require.Len(t, ids, 1, "every trigger of the burst joined one run")
		var burst string
		for id := range ids {
			burst = id
		}
		res, err := workflows.Result(ctx(t), s.Client.GetWorkflow(ctx(t), workflows.ReconcileWorkflowID("ws-burst"), burst))
		require.NoError(t, err)
		require.Equal(t, 2, res.Count(workflows.ActionDelivered))
		require.Equal(t, 1, box.Restarts())

		// A trigger after the burst finds everything in place.
		after := s.Reconcile("ws-burst", declared)
		require.Equal(t, 0, after.Count(workflows.ActionDelivered))
		require.Equal(t, 1, box.Restarts())
	})

	t.Run("history and visibility are readable", func(t *testing.T) {
		box := s.Box("ws-visible", all("github-tools"))
		res := s.Reconcile("ws-visible", declared)
		require.Equal(t, workflows.OutcomeRestarted, res.Outcome)

		// The activity summaries name what each step did.
		var summaries []string
		for _, id := range []string{workflows.ReconcileWorkflowID("ws-visible"), workflows.PluginWorkflowID(workflows.ReconcileWorkflowID("ws-visible"), "github-tools")} {
			iter := s.Client.GetWorkflowHistory(ctx(t), id, "", false, 0)
			for iter.HasNext() {
				ev, err := iter.Next()
				require.NoError(t, err)
				if attrs := ev.GetActivityTaskScheduledEventAttributes(); attrs != nil && ev.GetUserMetadata().GetSummary() != nil {
					var sum string
					require.NoError(t, converterFromPayload(ev.GetUserMetadata().GetSummary(), &sum))
					summaries = append(summaries, sum)
				}
			}
		}
		joined := strings.Join(summaries, "\n")
		require.Contains(t, joined, "probe github-tools@1.2.0 on "+box.InstanceID)
		require.Contains(t, joined, "deliver github-tools@1.2.0 to "+box.InstanceID)
		require.Contains(t, joined, "restart "+box.InstanceID+": 1 plugin(s) delivered")

		// Search attributes: find the run by outcome, workspace and plugin.
		require.Eventually(t, func() bool {
			resp, err := s.Client.ListWorkflow(ctx(t), &workflowservice.ListWorkflowExecutionsRequest{
				Query: `ReconcileOutcome = "restarted" AND WorkspaceId = "ws-visible" AND PluginNames = "github-tools" AND InstanceId = "` + box.InstanceID + `"`,
			})
			return err == nil && len(resp.Executions) == 1
		}, 20*time.Second, 200*time.Millisecond)
	})

	t.Run("retry after a failure delivers the rest and restarts once more only for it", func(t *testing.T) {
		box := s.Box("ws-retry", all("mcp-postgres"))
		plugins := append(append([]workflows.Plugin(nil), declared...), workflows.Plugin{Name: "late-plugin", Version: "1.0.0"})
		run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-retry", Plugins: plugins})
		require.NoError(t, err)
		res, err := workflows.Result(ctx(t), run)
		require.ErrorContains(t, err, "late-plugin")
		require.Equal(t, []string{"late-plugin"}, res.Failed)
		require.Equal(t, workflows.OutcomeFailed, res.Outcome)
		require.Equal(t, 1, res.Count(workflows.ActionDelivered))
		require.Equal(t, 1, box.Restarts(), "what was delivered got its restart")

		// The operator fixes the catalog and retries: nothing is delivered twice.
		require.NoError(t, catalog.Publish(s.CatalogDir, "late-plugin", "1.0.0", nil))
		again := s.Reconcile("ws-retry", plugins)
		require.Equal(t, 1, again.Count(workflows.ActionDelivered), "only late-plugin")
		require.Equal(t, 5, again.Count(workflows.ActionRecorded))
		require.Equal(t, 2, box.Restarts())
	})

	t.Run("terminate then re-run repairs", func(t *testing.T) {
		box := s.Box("ws-term", all("code-review"))
		s.Fleet.AWS.SetFaults(fakeaws.Faults{Latency: 2 * time.Second})
		run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-term", Plugins: declared})
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			d, err := s.Client.DescribeWorkflowExecution(ctx(t), run.GetID(), run.GetRunID())
			return err == nil && len(d.GetPendingChildren()) > 0
		}, time.Minute, 10*time.Millisecond, "the run is probing the box")
		require.NoError(t, s.Client.TerminateWorkflow(ctx(t), run.GetID(), run.GetRunID(), "operator test"))
		s.Fleet.AWS.SetFaults(fakeaws.Faults{})
		// The terminated run's children are cancelled; wait until they close
		// before re-running under the same child IDs.
		require.Eventually(t, func() bool {
			d, err := s.Client.DescribeWorkflowExecution(ctx(t), workflows.PluginWorkflowID(run.GetID(), "code-review"), "")
			return err != nil || d.WorkflowExecutionInfo.GetCloseTime() != nil
		}, time.Minute, 200*time.Millisecond)

		res := s.Reconcile("ws-term", declared)
		require.Empty(t, res.Failed)
		require.Equal(t, 1, box.Restarts(), "the re-run restarts once")
		require.Len(t, s.Rows("ws-term"), 5)
	})
}

func converterFromPayload(p *commonpb.Payload, v any) error {
	return converter.GetDefaultDataConverter().FromPayload(p, v)
}

func TestCancelDuringADelivery(t *testing.T) {
	s := servicetest.New(t)
	noise := make([]byte, 6<<20)
	_, _ = rand.Read(noise)
	require.NoError(t, catalog.Publish(s.CatalogDir, "big-model", "1.0.0", map[string]string{"weights.bin": string(noise)}))
	plugins := append(append([]workflows.Plugin(nil), declared...), workflows.Plugin{Name: "big-model", Version: "1.0.0"})
	box := s.Box("ws-cancel", all())
	box.SetLatency(300 * time.Millisecond)

	run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-cancel", Plugins: plugins})
	require.NoError(t, err)
	staging := onbox.PathsOf(reconcile.Box{PluginRoot: box.PluginRoot}, "big-model").StageFile
	require.Eventually(t, func() bool { _, err := os.Stat(staging); return err == nil }, time.Minute, 20*time.Millisecond, "the delivery never started")
	require.NoError(t, s.Client.CancelWorkflow(ctx(t), run.GetID(), run.GetRunID()))

	res, err := workflows.Result(ctx(t), run)
	var cancelled *temporal.CanceledError
	require.ErrorAs(t, err, &cancelled)
	require.Equal(t, workflows.OutcomeCancelled, res.Outcome)
	require.Contains(t, res.Summary, "restart left pending")
	require.Equal(t, 0, box.Restarts(), "no restart after a cancel")

	// A cancel reaches the delivery's activity at its next heartbeat: by
	// then the transfer was either cut (the previous state left in place,
	// staging removed) or complete (the plugin installed whole, its swap
	// journaled). Never half-written, and either way the restart stays owed.
	box.SetLatency(0)
	require.Eventually(t, func() bool { _, err := os.Stat(staging); return os.IsNotExist(err) }, 30*time.Second, 50*time.Millisecond)
	installed := false
	if data, err := os.ReadFile(box.ManifestPath("big-model")); err == nil {
		installed = true
		require.Contains(t, string(data), "version: 1.0.0", "installed whole")
	} else {
		_, err := os.Stat(filepath.Join(box.PluginRoot, "big-model"))
		require.True(t, os.IsNotExist(err), "no half-installed plugin")
	}
	w, err := s.Service.Store.Workspace(ctx(t), "ws-cancel")
	require.NoError(t, err)
	require.NotNil(t, w.RestartPendingSince, "the restart owed by the delivery is kept")
	t.Logf("the cancelled delivery was %s", map[bool]string{true: "complete", false: "cut"}[installed])

	// The next reconcile delivers what is missing and restarts once.
	again := s.Reconcile("ws-cancel", plugins)
	want := 1
	if installed {
		want = 0
	}
	require.Equal(t, want, again.Count(workflows.ActionDelivered))
	require.True(t, again.Restart.Done)
	require.Equal(t, 1, box.Restarts())
	requirePromise(t, box)
}
