package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// sweepDrift is how often a swept box lacks one of its plugins: one
// workspace in sweepDrift, so the sweep also delivers and restarts.
const sweepDrift = 100

// sweepWindow is the sweep's window (reconciles in flight at once), the
// operator's default.
const sweepWindow = 20

// sweepResult is the fleet sweep's run: a fleet of boot-installed boxes
// with declarations, swept by one worker with the sweep's defaults.
type sweepResult struct {
	Workspaces, Plugins int
	SetUp, Wall         time.Duration
	Report              workflows.SweepReport
	WantRestarts        int // boxes that lacked a plugin
	BoxRestarts         int // restarts the boxes counted
	Runs                int // sweep workflow runs (continue-as-new)
	MaxRunEvents        int // the largest run's history, in events
	MaxRunKB            float64
	WorkerRSSMB         float64
	ServerRSSMB         float64 // this process: the embedded server, fake AWS and the box links
	PeakConnections     int     // SSH connections open on the boxes at once (sampled every 250 ms)
	Pushes, Handshakes  int
	Failed              []string `json:",omitempty"`
}

// runSweep measures a fleet sweep of o.sweep workspaces × o.sweepPlugins
// plugins and writes its figures as JSON for the parent process.
func (b *bench) runSweep(ctx context.Context) error {
	var r sweepResult
	r.Workspaces, r.Plugins = b.o.sweep, min(b.o.sweepPlugins, len(b.plugins))
	plugins := b.plugins[:r.Plugins]
	stop, err := b.temporal(ctx)
	if err != nil {
		return err
	}
	defer stop()
	fl, err := fleet.New(b.aws)
	if err != nil {
		return err
	}
	defer fl.Close()

	step("sweep: starting %d boxes × %d plugins, one in %d lacking one", r.Workspaces, r.Plugins, sweepDrift)
	t0 := time.Now()
	decl := make([]reconcile.Plugin, len(plugins))
	for j, p := range plugins {
		decl[j] = reconcile.Plugin{Name: p.Name, Version: p.Version}
	}
	boxes := make([]*fleet.Box, r.Workspaces)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i := range boxes {
		g.Go(func() error {
			boot := map[string]string{}
			for j, p := range plugins {
				if i%sweepDrift != 0 || j != 1%len(plugins) {
					boot[p.Name] = p.Version
				}
			}
			box, err := fl.Boot(gctx, b.cat, boot)
			if err != nil {
				return err
			}
			box.SetLatency(b.o.sshLatency)
			ws := fmt.Sprintf("sweep-%05d", i)
			if err := b.st.UpsertWorkspace(gctx, store.Workspace{Box: box.Workspace(ws)}); err != nil {
				return err
			}
			// As the provisioning trigger leaves it: declared, never reconciled.
			if _, _, err := b.st.Declare(gctx, reconcile.DeclareInput{WorkspaceID: ws, Plugins: decl}, "bench-provision", ""); err != nil {
				return err
			}
			boxes[i] = box
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i := range boxes {
		if i%sweepDrift == 0 {
			r.WantRestarts++
		}
	}
	r.SetUp = time.Since(t0)
	step("sweep: %d boxes up in %s", len(boxes), r.SetUp.Round(time.Second))

	cmds, stopWorkers, err := b.startWorkers(ctx, variant{key: "ours", workers: 1}, fl, "sweep")
	defer stopWorkers()
	if err != nil {
		return err
	}
	// Sample the connections the boxes hold open while the sweep runs.
	var peak atomic.Int64
	done := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			open := 0
			for _, box := range boxes {
				open += box.OpenConnections()
			}
			if int64(open) > peak.Load() {
				peak.Store(int64(open))
			}
		}
	}()

	step("sweep: running")
	t1 := time.Now()
	run, err := workflows.StartSweep(ctx, b.c, workflows.SweepInput{MaxConcurrency: sweepWindow})
	if err != nil {
		close(done)
		return err
	}
	err = b.c.GetWorkflow(ctx, run.GetID(), "").Get(ctx, &r.Report)
	r.Wall = time.Since(t1)
	close(done)
	sampler.Wait()
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	r.PeakConnections = int(peak.Load())
	r.WorkerRSSMB = procHWM(cmds[0].Process.Pid)
	r.ServerRSSMB = procHWM(os.Getpid())
	r.Failed = r.Report.Failed
	for _, box := range boxes {
		r.BoxRestarts += box.Restarts()
		r.Handshakes += box.Logins()
		r.Pushes += b.aws.KeyPushes(box.InstanceID)
	}
	if r.Runs, r.MaxRunEvents, r.MaxRunKB, err = b.sweepRuns(ctx, run.GetRunID()); err != nil {
		return err
	}
	step("sweep: %d checked in %s (%d runs, largest %d events)", r.Report.Checked, r.Wall.Round(time.Second), r.Runs, r.MaxRunEvents)
	fmt.Printf("sweep: %+v\n", r)
	if b.o.jsonOut == "" {
		return nil
	}
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(b.o.jsonOut, data, 0o644)
}

// sweepRuns follows the sweep from its first run through each
// continue-as-new, and returns how many runs it made and the largest
// run's history (events, and kB as the server stores them).
func (b *bench) sweepRuns(ctx context.Context, runID string) (runs, maxEvents int, maxKB float64, err error) {
	for runID != "" {
		runs++
		events, size, next := 0, 0, ""
		it := b.c.GetWorkflowHistory(ctx, workflows.SweepWorkflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			e, err := it.Next()
			if err != nil {
				return runs, maxEvents, maxKB, err
			}
			events++
			size += proto.Size(e)
			if a := e.GetWorkflowExecutionContinuedAsNewEventAttributes(); a != nil {
				next = a.GetNewExecutionRunId()
			}
		}
		maxEvents, maxKB = max(maxEvents, events), max(maxKB, float64(size)/1024)
		runID = next
	}
	return runs, maxEvents, maxKB, nil
}

// renderSweep is the sweep's section of the report.
func renderSweep(s *strings.Builder, r sweepResult) {
	window, maxIdle := sweepWindow, eic.DefaultMaxIdle
	if r.Workspaces == 0 {
		return
	}
	mark := map[bool]string{true: "✓", false: "✗"}
	fmt.Fprintf(s, "\nFleet sweep: %d workspaces × %d plugins on the embedded stack, boot-installed and declared but never reconciled (one in %d lacking a plugin), swept by one worker with the sweep's defaults (window %d, 500 workspaces per run, then continue-as-new). Boxes started in %.0f s (not counted).\n\n",
		r.Workspaces, r.Plugins, sweepDrift, window, r.SetUp.Seconds())
	fmt.Fprintf(s, "| wall | reconciles/min | checked | delivered | restarts (needed) | failed | runs | largest run's history | worker peak RSS | server process peak RSS | SSH connections open at peak (bound: %d in flight + %d idle) | key pushes / ws | SSH handshakes / ws |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n", window, maxIdle)
	w := float64(max(r.Workspaces, 1))
	fmt.Fprintf(s, "| %.1f s | %.0f | %d | %d | %s %d (%d) | %d | %d | %d events, %.0f kB | %.0f MB | %.0f MB | %s %d | %.2f | %.2f |\n",
		r.Wall.Seconds(), float64(r.Report.Checked)/r.Wall.Minutes(), r.Report.Checked, r.Report.Delivered,
		mark[r.BoxRestarts == r.WantRestarts], r.BoxRestarts, r.WantRestarts, r.Report.Failures, r.Runs, r.MaxRunEvents, r.MaxRunKB,
		r.WorkerRSSMB, r.ServerRSSMB, mark[r.PeakConnections <= window+maxIdle], r.PeakConnections, float64(r.Pushes)/w, float64(r.Handshakes)/w)
	for _, f := range r.Failed {
		fmt.Fprintf(s, "\n- failed: %s", f)
	}
	if len(r.Failed) > 0 {
		s.WriteString("\n")
	}
}
