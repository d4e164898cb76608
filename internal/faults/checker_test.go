package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/devserver"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// The interleaving checker, in the spirit of Jepsen and FoundationDB's
// simulation tests: a seed makes a schedule (boxes, then timed events that
// mix triggers, narrower and newer declarations, declarations with Prune
// (the whole set: what they drop is removed), worker SIGKILLs and
// SIGTERM deploys, resets to a random earlier point, terminate-then-retry,
// cancels, slow and failing restarts, Postgres and sshd outages); the
// schedule runs against the real stack (embedded Temporal, a private
// Postgres, sshd boxes, the worker as a process); when it has settled and
// a last trigger has declared what the schedule declared in all, the
// invariants are checked from the boxes' own record and the store:
//
//   - every change swapped onto a box is followed by exactly one restart
//     of its runtime, and no restart follows no change;
//   - nothing is pending: no mark, no restart in flight, no journal line
//     the running runtime has not loaded;
//   - tracking rows equal what is on the boxes, at the declared versions.
//
// CHECKER_SCHEDULES sets how many schedules run (seeds 1..N, plus the
// regression seeds), CHECKER_SEEDS runs the given seeds only, and
// CHECKER_LANES runs that many independent stacks side by side (each its
// own Temporal, Postgres, worker and fleet, so a seed's schedule never
// meets another's). A failing schedule prints its seed and its events.

// regressions are schedules that found a defect (fixed since); they
// always run.
var regressions = []struct {
	seed  uint64
	found string
}{
	{1, "a deploy during a Postgres outage: the new worker exited at start (its migration could not connect) while the old one drained away, leaving no worker; a starting worker now waits for Postgres"},
	{153, "a deploy while Postgres shut down: the new worker's migration got FATAL 57P03 (the database system is shutting down), took it as final and exited, leaving no worker; shutdown, startup and connection errors are now waited for"},
	{175, "the same as 153, with a Postgres outage landing just after a deploy"},
}

var checkerPlugins = []string{"github-tools", "mcp-postgres", "code-review", "slack-notify"}

// checkerVersions are published for every checker plugin, oldest first.
var checkerVersions = []string{"9.1.0", "9.2.0", "9.3.0"}

type eventKind string

const (
	evTrigger     eventKind = "trigger"
	evKill        eventKind = "worker-sigkill"
	evDeploy      eventKind = "worker-sigterm-deploy"
	evReset       eventKind = "reset"
	evTermRetry   eventKind = "terminate-then-retry"
	evCancel      eventKind = "cancel"
	evSlowRestart eventKind = "slow-restart"
	evFailRestart eventKind = "failing-restart"
	evPGOutage    eventKind = "postgres-outage"
	evSSHDOutage  eventKind = "sshd-outage"
)

var allKinds = []eventKind{evTrigger, evKill, evDeploy, evReset, evTermRetry, evCancel, evSlowRestart, evFailRestart, evPGOutage, evSSHDOutage}

type event struct {
	At      time.Duration
	Kind    eventKind
	WS      int
	Plugins []workflows.Plugin // trigger: the declaration
	Prune   bool               // trigger: the declaration is the whole set
	D       time.Duration      // outages, slow restarts, the worker's time down
	N       int                // failing restarts: how many; reset: which workflow task
}

func (e event) String() string {
	s := fmt.Sprintf("+%5dms %-22s", e.At.Milliseconds(), e.Kind)
	switch e.Kind {
	case evTrigger:
		var ps []string
		for _, p := range e.Plugins {
			ps = append(ps, p.String())
		}
		s += fmt.Sprintf(" ws%d %s", e.WS, strings.Join(ps, ","))
		if e.Prune {
			s += " prune"
		}
	case evReset:
		s += fmt.Sprintf(" ws%d to workflow task #%d", e.WS, e.N)
	case evTermRetry, evCancel:
		s += fmt.Sprintf(" ws%d", e.WS)
	case evSlowRestart:
		s += fmt.Sprintf(" ws%d %s", e.WS, e.D)
	case evFailRestart:
		s += fmt.Sprintf(" ws%d next %d", e.WS, e.N)
	case evSSHDOutage:
		s += fmt.Sprintf(" ws%d %s", e.WS, e.D)
	case evKill, evPGOutage:
		s += " " + e.D.String()
	}
	return s
}

type schedule struct {
	Seed   uint64
	Boot   []map[string]string
	Events []event
}

// generate makes seed's schedule: the same seed, the same schedule.
func generate(seed uint64) schedule {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	// Which later triggers carry Prune is drawn from a stream of its own,
	// so a seed's timeline stays what it was before Prune existed (the
	// regression seeds still replay the schedules that found them).
	pruneRNG := rand.New(rand.NewPCG(seed, 0x9a9e))
	s := schedule{Seed: seed}
	const boxes = 3
	declared := make([]map[string]int, boxes) // plugin -> version index
	for i := range boxes {
		boot := map[string]string{}
		for _, p := range checkerPlugins {
			if rng.IntN(2) == 0 {
				boot[p] = checkerVersions[0]
			}
		}
		s.Boot = append(s.Boot, boot)
		declared[i] = map[string]int{}
	}
	declare := func(ws int, newer bool) []workflows.Plugin {
		var out []workflows.Plugin
		for _, p := range checkerPlugins {
			if rng.IntN(3) == 0 && len(out) > 0 {
				continue // narrower
			}
			v := rng.IntN(2)
			if cur, ok := declared[ws][p]; ok {
				v = cur
				if newer && rng.IntN(2) == 0 && v+1 < len(checkerVersions) {
					v++
				}
			}
			declared[ws][p] = v
			out = append(out, workflows.Plugin{Name: p, Version: checkerVersions[v]})
		}
		return out
	}
	for ws := range boxes {
		s.Events = append(s.Events, event{At: time.Duration(rng.IntN(300)) * time.Millisecond, Kind: evTrigger, WS: ws, Plugins: declare(ws, false)})
	}
	weights := map[eventKind]int{evTrigger: 26, evKill: 8, evDeploy: 8, evReset: 10, evTermRetry: 8, evCancel: 6, evSlowRestart: 12, evFailRestart: 8, evPGOutage: 5, evSSHDOutage: 9}
	total := 0
	for _, k := range allKinds {
		total += weights[k]
	}
	n := 6 + rng.IntN(8)
	for range n {
		e := event{At: time.Duration(200+rng.IntN(6000)) * time.Millisecond, WS: rng.IntN(boxes)}
		pick := rng.IntN(total)
		for _, k := range allKinds {
			if pick < weights[k] {
				e.Kind = k
				break
			}
			pick -= weights[k]
		}
		switch e.Kind {
		case evTrigger:
			e.Plugins = declare(e.WS, true)
			e.Prune = pruneRNG.IntN(3) == 0
		case evKill:
			e.D = time.Duration(100+rng.IntN(900)) * time.Millisecond
		case evReset:
			e.N = rng.IntN(40)
		case evSlowRestart:
			e.D = time.Duration(500+rng.IntN(3500)) * time.Millisecond
		case evFailRestart:
			e.N = 1 + rng.IntN(3)
		case evPGOutage, evSSHDOutage:
			e.D = time.Duration(1000+rng.IntN(3000)) * time.Millisecond
		}
		s.Events = append(s.Events, e)
	}
	sort.SliceStable(s.Events, func(i, j int) bool { return s.Events[i].At < s.Events[j].At })
	return s
}

// desired is what the schedule declared for each workspace in all: its
// declarations applied in order as the store applies them (a later
// version wins; a Prune declaration replaces the set).
func (s schedule) desired() [][]workflows.Plugin {
	out := make([][]workflows.Plugin, len(s.Boot))
	for _, e := range s.Events {
		if e.Kind == evTrigger {
			out[e.WS] = reconcile.Declare(out[e.WS], e.Plugins, e.Prune)
		}
	}
	return out
}

// touched reports whether the schedule cancelled, terminated or reset
// ws's reconcile. Such a run may end before it records a declaration that
// was signalled to it (a cancel is the operator's word), and an attempt of
// its delivery may still be running when it ends and swap its plugin in
// after a later run removed it; the last trigger's Prune puts the
// declaration right, so for such a workspace the checker does not require
// the declaration stored before it, nor a box without strays.
func (s schedule) touched(ws int) bool {
	for _, e := range s.Events {
		if e.WS == ws && (e.Kind == evCancel || e.Kind == evTermRetry || e.Kind == evReset) {
			return true
		}
	}
	return false
}

// checkerStats are the figures the report gives.
type checkerStats struct {
	mu              sync.Mutex
	schedules       int
	events          map[eventKind]int
	acted           map[eventKind]int // events that found something to act on
	invariants      int
	swaps, restarts int
	failures        []string
}

var stats = &checkerStats{events: map[eventKind]int{}, acted: map[eventKind]int{}}

func (c *checkerStats) add(events []event, acted map[eventKind]int, boxes []*fleet.Box, invariants int, failure string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.schedules++
	for _, e := range events {
		c.events[e.Kind]++
	}
	for k, n := range acted {
		c.acted[k] += n
	}
	for _, b := range boxes {
		evs, _ := b.Events()
		for _, e := range evs {
			switch e.Kind {
			case fleet.Restart:
				c.restarts++
			default:
				c.swaps++
			}
		}
	}
	c.invariants += invariants
	if failure != "" {
		c.failures = append(c.failures, failure)
	}
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func checkerSeeds() []uint64 {
	if v := os.Getenv("CHECKER_SEEDS"); v != "" {
		var out []uint64
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
			if err == nil {
				out = append(out, n)
			}
		}
		return out
	}
	var seeds []uint64
	for _, r := range regressions {
		seeds = append(seeds, r.seed)
	}
	for s := uint64(1); s <= uint64(envInt("CHECKER_SCHEDULES", 3)); s++ {
		if !slices.Contains(seeds, s) {
			seeds = append(seeds, s)
		}
	}
	return seeds
}

func TestInterleavings(t *testing.T) {
	seeds := checkerSeeds()
	lanes := min(envInt("CHECKER_LANES", 1), len(seeds))
	queue := make(chan uint64, len(seeds))
	for _, s := range seeds {
		queue <- s
	}
	close(queue)
	for lane := range lanes {
		t.Run(fmt.Sprintf("lane%d", lane), func(t *testing.T) {
			if lanes > 1 {
				t.Parallel()
			}
			h := newHarness(t)
			for _, p := range checkerPlugins {
				for _, v := range checkerVersions {
					require.NoError(t, catalog.Publish(h.catDir, p, v, map[string]string{"bin/run": "#!/bin/sh\necho " + p + " " + v + "\n"}))
				}
			}
			for seed := range queue {
				runSchedule(t, h, generate(seed))
			}
		})
	}
}

// lane is one schedule's run on a harness.
type lane struct {
	t      *testing.T
	h      *harness
	s      schedule
	ws     []string
	boxes  []*fleet.Box
	timers sync.WaitGroup
	pgMu   sync.Mutex
	acted  map[eventKind]int
}

func runSchedule(t *testing.T, h *harness, s schedule) {
	l := &lane{t: t, h: h, s: s, acted: map[eventKind]int{}}
	for i, boot := range s.Boot {
		ws := fmt.Sprintf("seed%d-ws%d", s.Seed, i)
		l.ws = append(l.ws, ws)
		l.boxes = append(l.boxes, h.box(ws, boot))
	}
	start := time.Now()
	for _, e := range s.Events {
		time.Sleep(time.Until(start.Add(e.At)))
		l.do(e)
	}
	failure := l.settleAndCheck()
	invariants := 4 * len(l.boxes)
	if failure != "" {
		var b strings.Builder
		fmt.Fprintf(&b, "seed %d:\n  %s\n  events:\n", s.Seed, failure)
		for _, e := range s.Events {
			fmt.Fprintf(&b, "    %s\n", e)
		}
		for i, box := range l.boxes {
			evs, _ := box.Events()
			fmt.Fprintf(&b, "  ws%d box record: %v\n", i, evs)
		}
		if dir := os.Getenv("CHECKER_KEEP_LOGS"); dir != "" {
			data, _ := os.ReadFile(h.logPath)
			p := filepath.Join(dir, fmt.Sprintf("checker-seed-%d-worker.log", s.Seed))
			if os.WriteFile(p, data, 0o644) == nil {
				fmt.Fprintf(&b, "  worker log: %s\n", p)
			}
		}
		failure = b.String()
		t.Errorf("interleaving schedule failed (rerun with CHECKER_SEEDS=%d):\n%s", s.Seed, failure)
	}
	stats.add(s.Events, l.acted, l.boxes, invariants, failure)
	for _, b := range l.boxes {
		b.StopSSHD() // keeps a long run's process count flat
	}
}

func (l *lane) do(e event) {
	h, ws := l.h, l.ws[e.WS]
	box := l.boxes[e.WS]
	c := ctx(l.t)
	ok := true
	defer func() {
		if ok {
			l.acted[e.Kind]++
		}
	}()
	switch e.Kind {
	case evTrigger:
		_, err := workflows.Start(c, h.client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: e.Plugins, Prune: e.Prune})
		ok = err == nil
	case evKill:
		h.killWorker()
		l.after(e.D, func() { h.startWorker() })
	case evDeploy:
		old := h.stopWorker()
		h.startWorker()
		_ = old // it drains and exits on its own
	case evReset:
		ok = l.reset(ws, e.N)
	case evTermRetry:
		ok = h.client.TerminateWorkflow(c, workflows.ReconcileWorkflowID(ws), "", "checker: terminate then retry") == nil
		if in, err := workflows.RetryInput(c, h.client, ws); err == nil {
			_, _ = workflows.Start(c, h.client, in)
		}
	case evCancel:
		ok = h.client.CancelWorkflow(c, workflows.ReconcileWorkflowID(ws), "") == nil
	case evSlowRestart:
		require.NoError(l.t, box.SetRestartDelay(e.D))
	case evFailRestart:
		require.NoError(l.t, box.FailRestarts(e.N, 1))
	case evPGOutage:
		l.pgMu.Lock()
		port, dir := h.pg.Port, h.pg.Dir
		h.pg.Stop()
		l.after(e.D, func() {
			defer l.pgMu.Unlock()
			pg, err := pgcluster.Start(ctx(l.t), dir, port)
			require.NoError(l.t, err)
			h.pg = pg
		})
	case evSSHDOutage:
		box.StopSSHD()
		l.after(e.D, func() { require.NoError(l.t, box.StartSSHD()) })
	}
}

// after runs fn in d, counted: the schedule settles only when it has run.
func (l *lane) after(d time.Duration, fn func()) {
	l.timers.Add(1)
	time.AfterFunc(d, func() { defer l.timers.Done(); fn() })
}

// reset resets the workspace's latest run to one of its completed
// workflow tasks (the n-th, modulo how many there are), reapplying the
// signals after it (the server's default).
func (l *lane) reset(ws string, n int) bool {
	c := ctx(l.t)
	id := workflows.ReconcileWorkflowID(ws)
	d, err := l.h.client.DescribeWorkflowExecution(c, id, "")
	if err != nil {
		return false
	}
	runID := d.GetWorkflowExecutionInfo().GetExecution().GetRunId()
	var points []int64
	iter := l.h.client.GetWorkflowHistory(c, id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		ev, err := iter.Next()
		if err != nil {
			return false
		}
		if ev.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED {
			points = append(points, ev.GetEventId())
		}
	}
	if len(points) == 0 {
		return false
	}
	_, err = l.h.client.ResetWorkflowExecution(c, &workflowservice.ResetWorkflowExecutionRequest{
		Namespace:                 devserver.Namespace,
		WorkflowExecution:         &commonpb.WorkflowExecution{WorkflowId: id, RunId: runID},
		Reason:                    "checker: reset to an earlier point",
		WorkflowTaskFinishEventId: points[n%len(points)],
		RequestId:                 fmt.Sprintf("checker-%s-%d", runID, n),
	})
	return err == nil
}

// settleAndCheck ends the schedule's faults, lets what runs finish, checks
// the stored declarations, makes a last trigger of everything declared
// (with Prune: the whole set), and checks the invariants. It returns the
// first broken one, or "".
func (l *lane) settleAndCheck() string {
	h := l.h
	l.timers.Wait()
	for _, b := range l.boxes {
		require.NoError(l.t, b.SetRestartDelay(0))
		require.NoError(l.t, b.FailRestarts(0, 1))
	}
	if h.serving() == 0 {
		h.startWorker()
	}
	c, cancel := context.WithTimeout(ctx(l.t), 6*time.Minute)
	defer cancel()
	// Everything of this schedule's workspaces has ended: the reconciles
	// and their plugin children (a new run must not meet a closing child).
	for _, ws := range l.ws {
		ids := []string{workflows.ReconcileWorkflowID(ws)}
		for _, p := range checkerPlugins {
			ids = append(ids, workflows.PluginWorkflowID(workflows.ReconcileWorkflowID(ws), p))
		}
		for _, id := range ids {
			for {
				d, err := h.client.DescribeWorkflowExecution(c, id, "")
				if err != nil && c.Err() == nil && !strings.Contains(err.Error(), "not found") {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				if err != nil || d.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
					break
				}
				if c.Err() != nil {
					return fmt.Sprintf("%s still running after 6 minutes", id)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	desired := l.s.desired()
	for i, ws := range l.ws {
		if l.s.touched(i) {
			continue
		}
		if msg := l.checkDeclaration(ws, desired[i], false); msg != "" {
			return fmt.Sprintf("ws%d before the last trigger: %s", i, msg)
		}
	}
	for i, ws := range l.ws {
		run, err := workflows.Start(c, h.client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: desired[i], Prune: true})
		if err != nil {
			return fmt.Sprintf("ws%d: last trigger: %v", i, err)
		}
		if _, err := workflows.Result(c, run); err != nil {
			return fmt.Sprintf("ws%d: the last reconcile failed: %v", i, err)
		}
	}
	for i, ws := range l.ws {
		if msg := l.check(ws, l.boxes[i], l.s.Boot[i], desired[i], !l.s.touched(i)); msg != "" {
			return fmt.Sprintf("ws%d: %s", i, msg)
		}
	}
	return ""
}

// checkDeclaration compares the stored declaration with what the schedule
// declared; observed also requires it reconciled in full.
func (l *lane) checkDeclaration(ws string, desired []workflows.Plugin, observed bool) string {
	d, err := l.h.store.Declaration(ctx(l.t), ws)
	if err != nil {
		return "stored declaration: " + err.Error()
	}
	if !slices.Equal(d.Plugins, reconcile.Declare(nil, desired, true)) {
		return fmt.Sprintf("stored declaration %v, the schedule declared %v", d.Plugins, desired)
	}
	if observed && d.Behind() {
		return fmt.Sprintf("declaration generation %d, observed %d", d.Generation, d.ObservedGeneration)
	}
	return ""
}

// check judges one workspace: the restart promise from the box's record,
// nothing pending, rows equal to the box at the declared versions, the
// declaration stored and observed, and (noStrays) no plugin on the box
// that is not declared except as it was booted.
func (l *lane) check(ws string, box *fleet.Box, boot map[string]string, desired []workflows.Plugin, noStrays bool) string {
	c := ctx(l.t)
	events, err := box.Events()
	if err != nil {
		return err.Error()
	}
	if err := fleettest.CheckRestarts(events); err != nil {
		return "restart promise: " + err.Error()
	}
	st, err := l.h.store.RestartState(c, ws)
	if err != nil {
		return err.Error()
	}
	if st.PendingSince != nil || len(st.Marks) > 0 || st.InFlight != nil {
		return fmt.Sprintf("pending: since %v, %d marks, in flight %v", st.PendingSince, len(st.Marks), st.InFlight)
	}
	journal, _ := os.ReadFile(filepath.Join(box.PluginRoot, ".reconciler", "journal"))
	current := box.Identity()
	for _, e := range reconcile.ParseJournal(string(journal)) {
		if e.Identity == "" || e.Identity == current {
			return fmt.Sprintf("pending on the box: journal line %q owes a restart", e.Plugin+" "+e.Identity)
		}
	}
	rows, err := l.h.store.TrackingRows(c, ws)
	if err != nil {
		return err.Error()
	}
	tracked := map[string]string{}
	for _, r := range rows {
		tracked[r.PluginName] = r.Version
	}
	if len(tracked) != len(desired) {
		return fmt.Sprintf("tracking rows %v, declared %v", tracked, desired)
	}
	for _, p := range desired {
		data, err := os.ReadFile(box.ManifestPath(p.Name))
		if err != nil {
			return fmt.Sprintf("%s is not on the box", p.Name)
		}
		m, err := reconcile.ParseManifest(data)
		if err != nil || m.Version != p.Version {
			return fmt.Sprintf("%s on the box is %q, declared %s", p.Name, m.Version, p.Version)
		}
		if tracked[p.Name] != p.Version {
			return fmt.Sprintf("%s tracked at %q, declared %s", p.Name, tracked[p.Name], p.Version)
		}
	}
	if msg := l.checkDeclaration(ws, desired, true); msg != "" {
		return msg
	}
	for _, name := range checkerPlugins {
		if !noStrays || slices.ContainsFunc(desired, func(p workflows.Plugin) bool { return p.Name == name }) {
			continue
		}
		data, err := os.ReadFile(box.ManifestPath(name))
		if err != nil {
			continue
		}
		if m, err := reconcile.ParseManifest(data); err != nil || m.Version != boot[name] {
			return fmt.Sprintf("%s is on the box (%q) though not declared, and not as it was booted", name, m.Version)
		}
	}
	return ""
}

// write appends the checker's figures to the report.
func (c *checkerStats) write(b *strings.Builder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.schedules == 0 {
		return
	}
	total := 0
	for _, n := range c.events {
		total += n
	}
	fmt.Fprintf(b, "\n## Interleaving checker\n\n%d seeded schedules (`CHECKER_SCHEDULES=%s`, `CHECKER_LANES=%s`, and the regression seeds), %d events, %d invariants checked (4 per workspace: the restart promise from the box's own record, nothing pending in the store or the box's journal, rows equal to the box at the declared versions, the declaration stored as declared and reconciled in full; a workspace no cancel, terminate or reset touched also has its declaration checked before the last trigger and no stray plugin on its box), %d failed. A schedule is rerun alone with `CHECKER_SEEDS=<seed>`.\n\n",
		c.schedules, os.Getenv("CHECKER_SCHEDULES"), os.Getenv("CHECKER_LANES"), total, c.invariants, len(c.failures))
	b.WriteString("Regression seeds (defects the checker found, fixed since):\n\n")
	for _, r := range regressions {
		fmt.Fprintf(b, "- seed %d: %s\n", r.seed, r.found)
	}
	b.WriteString("\n")
	fmt.Fprintf(b, "The boxes recorded %d changes (swaps and the renames that make them) and %d runtime restarts; every one was judged.\n\n", c.swaps, c.restarts)
	b.WriteString("| event | scheduled | acted (a run to reset, cancel or terminate was there) |\n|---|---|---|\n")
	for _, k := range allKinds {
		fmt.Fprintf(b, "| %s | %d | %d |\n", k, c.events[k], c.acted[k])
	}
	for _, f := range c.failures {
		fmt.Fprintf(b, "\n```\n%s```\n", f)
	}
}

// The schedules carry Prune declarations, and desired applies them as the
// store does; seeds keep their timelines.
func TestSchedulesCarryPrune(t *testing.T) {
	prunes := 0
	for seed := uint64(1); seed <= 20; seed++ {
		s := generate(seed)
		require.Equal(t, s, generate(seed), "the same seed, the same schedule")
		want := make([]map[string]string, len(s.Boot))
		for _, e := range s.Events {
			if e.Kind != evTrigger {
				continue
			}
			if e.Prune {
				prunes++
				want[e.WS] = map[string]string{}
			}
			if want[e.WS] == nil {
				want[e.WS] = map[string]string{}
			}
			for _, p := range e.Plugins {
				want[e.WS][p.Name] = p.Version
			}
		}
		for ws, d := range s.desired() {
			got := map[string]string{}
			for _, p := range d {
				got[p.Name] = p.Version
			}
			require.Equal(t, want[ws], got, "seed %d ws%d", seed, ws)
		}
	}
	require.Greater(t, prunes, 10, "20 schedules carry Prune declarations")
	require.Equal(t, 3, len(generate(1).Boot))
}
