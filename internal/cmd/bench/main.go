// Command bench measures the reconciler at fleet scale on the real stack —
// embedded Temporal, a private Postgres, the simulated fleet with injected
// latency, the worker as its own process — side by side with the naive
// access path, the orchestration floor (the same workflows with no-op
// activities) and the I/O floor (the same probes over SSH without
// Temporal). It prints a table and writes it to docs/benchmarks.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/devserver"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

type options struct {
	workspaces, plugins, shards int
	awsLatency, sshLatency      time.Duration
	out                         string
	naive                       bool
	pool                        int // workers of the pool variant; 0: none
	only                        string
	jsonOut                     string
	cpuProfile                  string
	sweep, sweepPlugins         int // the fleet sweep's workspaces (0: none) and plugins each
}

// result is one measured run.
type result struct {
	name                 string
	wall                 time.Duration
	p50, p95             time.Duration
	pushes, handshakes   int
	commands             int     // remote commands (SSH sessions) on the boxes
	events               float64 // history events per workspace (sampled)
	actions              float64 // Temporal actions per workspace (sampled; see countEvents)
	deliveries, restarts int
	wantRestarts         int
	cpu                  time.Duration
	boxCPU               time.Duration // the simulated boxes' sshd, sessions and commands
	selfCPU              time.Duration // this process: the embedded server, fake AWS, link proxies
	allCPU               time.Duration // the whole machine
	rssMB                float64
	failed               int
	profile              string // the worker's CPU profile (pprof -top), on the runs profiled
}

// resultJSON is result with exported fields, to pass figures from the
// process that made a run to the one that writes the report.
type resultJSON struct {
	Name                 string
	Wall, P50, P95       time.Duration
	Pushes, Handshakes   int
	Commands             int
	Events, Actions      float64
	Deliveries, Restarts int
	WantRestarts         int
	CPU, BoxCPU          time.Duration
	SelfCPU, AllCPU      time.Duration
	RSSMB                float64
	Failed               int
	Profile              string `json:",omitempty"`
}

func toJSON(r result) resultJSON {
	return resultJSON{r.name, r.wall, r.p50, r.p95, r.pushes, r.handshakes, r.commands, r.events, r.actions, r.deliveries, r.restarts,
		r.wantRestarts, r.cpu, r.boxCPU, r.selfCPU, r.allCPU, r.rssMB, r.failed, r.profile}
}

func fromJSON(j resultJSON) result {
	return result{name: j.Name, wall: j.Wall, p50: j.P50, p95: j.P95, pushes: j.Pushes, handshakes: j.Handshakes,
		commands: j.Commands, events: j.Events, actions: j.Actions, deliveries: j.Deliveries, restarts: j.Restarts, wantRestarts: j.WantRestarts,
		cpu: j.CPU, boxCPU: j.BoxCPU, selfCPU: j.SelfCPU, allCPU: j.AllCPU, rssMB: j.RSSMB, failed: j.Failed, profile: j.Profile}
}

// runEach makes every run in a process of its own (this program with
// -only), so that no run pays for what an earlier one left in memory (a
// stopped embedded server's in-memory database stays allocated), then
// writes the report.
func runEach(o options) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-runs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var rows []result
	var orch, io result
	var keys []string
	for _, sc := range o.scenarios() {
		for _, v := range o.variants() {
			keys = append(keys, sc.key+":"+v.key)
		}
	}
	keys = append([]string{"one"}, append(keys, "floor", "io")...)
	if o.sweep > 0 {
		keys = append([]string{"sweep"}, keys...) // first: the largest fleet fails, if it does, before the rest has run
	}
	var sweep sweepResult
	var failedRuns []string
	for _, key := range keys {
		file := filepath.Join(dir, strings.ReplaceAll(key, ":", "-")+".json")
		// A run that fails (a handshake timing out on the saturated
		// machine) is made once more in a new process; one that fails twice
		// is named in the report, and the other runs still are reported.
		var err error
		for attempt := range 2 {
			cmd := exec.Command(exe, "-only", key, "-json", file,
				"-workspaces", strconv.Itoa(o.workspaces), "-plugins", strconv.Itoa(o.plugins), "-shards", strconv.Itoa(o.shards),
				"-aws-latency", o.awsLatency.String(), "-ssh-latency", o.sshLatency.String(), "-naive="+strconv.FormatBool(o.naive),
				"-pool", strconv.Itoa(o.pool), "-sweep", strconv.Itoa(o.sweep), "-sweep-plugins", strconv.Itoa(o.sweepPlugins))
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err = cmd.Run(); err == nil {
				break
			}
			step("run %s failed (attempt %d of 2): %v", key, attempt+1, err)
		}
		if err != nil {
			failedRuns = append(failedRuns, fmt.Sprintf("%s (%v; its log is above this report on stderr)", key, err))
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		if key == "sweep" {
			if err := json.Unmarshal(data, &sweep); err != nil {
				return fmt.Errorf("run %s: %w", key, err)
			}
			continue
		}
		var got []resultJSON
		if err := json.Unmarshal(data, &got); err != nil {
			return fmt.Errorf("run %s: %w", key, err)
		}
		for _, r := range got {
			switch key {
			case "floor":
				orch = fromJSON(r)
			case "io":
				io = fromJSON(r)
			default:
				rows = append(rows, fromJSON(r))
			}
		}
	}
	report := render(o, rows, orch, io, sweep)
	for _, f := range failedRuns {
		report += "\nFailed twice, so missing from the tables: " + f + "\n"
	}
	fmt.Print(report)
	if o.out != "" {
		return os.WriteFile(o.out, []byte(report), 0o644)
	}
	return nil
}

func main() {
	var o options
	flag.IntVar(&o.workspaces, "workspaces", 200, "workspaces (one box each)")
	flag.IntVar(&o.plugins, "plugins", 8, "declared plugins per workspace")
	flag.IntVar(&o.shards, "shards", 8, "history shards of the embedded server")
	flag.DurationVar(&o.awsLatency, "aws-latency", 100*time.Millisecond, "added to every AWS API call")
	flag.DurationVar(&o.sshLatency, "ssh-latency", 20*time.Millisecond, "added each way on every box's SSH link")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "where to write the report (empty: don't)")
	flag.BoolVar(&o.naive, "naive", true, "also run the naive access path")
	flag.IntVar(&o.pool, "pool", 3, "also run ours on a pool of this many worker processes (0: don't)")
	flag.StringVar(&o.only, "only", "", "comma-separated runs to make in this process (one, boot, fresh, mixed, floor, io, or sweep alone; boot:ours, boot:pool, boot:naive, ...); prints their figures, writes no report")
	flag.StringVar(&o.jsonOut, "json", "", "with -only: also write the figures as JSON to this file")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (the embedded server, and the floor's worker) to this file")
	flag.IntVar(&o.sweep, "sweep", 2000, "also run a fleet sweep of this many workspaces (0: don't)")
	flag.IntVar(&o.sweepPlugins, "sweep-plugins", 2, "declared plugins per workspace of the fleet sweep")
	naiveWorker := flag.Bool("naive-worker", false, "run as the naive path's worker (configured by the environment, as the worker is)")
	flag.Parse()
	if *naiveWorker {
		cfg, err := service.FromEnv()
		if err == nil {
			cfg.DialPerOperation = true
			err = service.Run(context.Background(), cfg, slog.New(slog.NewJSONHandler(os.Stderr, nil)))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: naive worker:", err)
			os.Exit(1)
		}
		return
	}
	// This process runs the embedded server, which allocates heavily (the
	// floor's profile: a tenth of the CPU in GC at the default 100). The
	// worker processes keep the default.
	debug.SetGCPercent(400)
	runner := run
	if o.only == "" {
		runner = runEach
	}
	if err := runner(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type bench struct {
	o       options
	dir     string
	dsn     string
	dev     *devserver.Server
	aws     *fakeaws.Server
	catDir  string
	cat     *catalog.Catalog
	st      *store.Store
	c       client.Client
	bin     string
	plugins []workflows.Plugin
	// profileAddr is where the profiled run's worker serves its profiles.
	profileAddr string
}

func run(o options) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &bench{o: o, dir: dir}
	stop, err := b.setUp(ctx)
	defer stop()
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if o.only == "sweep" {
		return b.runSweep(ctx)
	}
	alone, err := b.runAlone(ctx)
	if err != nil {
		return err
	}
	rows, err := b.runScenarios(ctx)
	if err != nil {
		return err
	}
	rows = append(alone, rows...)
	orch, io, err := b.runFloors(ctx)
	if err != nil {
		return err
	}
	if o.only != "" {
		return printOnly(o, append(rows, orch, io))
	}
	report := render(o, rows, orch, io, sweepResult{})
	fmt.Print(report)
	if o.out != "" {
		return os.WriteFile(o.out, []byte(report), 0o644)
	}
	return nil
}

func step(format string, args ...any) { fmt.Fprintf(os.Stderr, "» "+format+"\n", args...) }

// setUp builds the worker and starts what every run shares: Postgres, the
// fake AWS endpoint and the catalog. stop undoes it, also on an error.
func (b *bench) setUp(ctx context.Context) (stop func(), err error) {
	var closers []func()
	stop = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	o := b.o
	step("building the worker")
	b.bin = filepath.Join(b.dir, "worker")
	if b.profileAddr, err = freeAddr(); err != nil {
		return stop, err
	}
	if out, err := exec.Command("go", "build", "-o", b.bin, "./worker").CombinedOutput(); err != nil {
		return stop, fmt.Errorf("build worker: %v: %s", err, out)
	}
	step("starting Postgres and the fake AWS endpoint (+%s per call); each run gets a fresh Temporal server (%d history shards)", o.awsLatency, o.shards)
	pg, err := pgcluster.Start(ctx, filepath.Join(b.dir, "pg"), 0)
	if err != nil {
		return stop, err
	}
	closers = append(closers, pg.Stop)
	if b.dsn, err = pgcluster.CreateDatabase(ctx, pg.DSN("postgres"), "bench"); err != nil {
		return stop, err
	}
	if _, err := migrations.Apply(ctx, b.dsn); err != nil {
		return stop, err
	}
	if b.st, err = store.Open(ctx, b.dsn); err != nil {
		return stop, err
	}
	closers = append(closers, b.st.Close)
	if b.aws, err = fakeaws.Start("us-east-1"); err != nil {
		return stop, err
	}
	closers = append(closers, func() { _ = b.aws.Close() })
	b.aws.SetFaults(fakeaws.Faults{Latency: o.awsLatency})
	b.catDir = filepath.Join(b.dir, "catalog")
	for i := range o.plugins {
		p := workflows.Plugin{Name: fmt.Sprintf("plugin-%02d", i+1), Version: "1.0.0"}
		b.plugins = append(b.plugins, p)
		if err := catalog.Publish(b.catDir, p.Name, p.Version, map[string]string{"lib/code.js": strings.Repeat("// plugin code\n", 2000)}); err != nil {
			return stop, err
		}
	}
	b.cat, err = catalog.New(b.catDir)
	return stop, err
}

// wants says whether this process makes a run: named by its key (boot,
// fresh, mixed, floor, io), a scenario's variant by key:ours or key:naive.
func (o options) wants(keys ...string) bool {
	if o.only == "" {
		return true
	}
	for _, k := range keys {
		if slices.Contains(strings.Split(o.only, ","), k) {
			return true
		}
	}
	return false
}

// scenario is a fleet to reconcile: which plugins each box lacks.
type scenario struct {
	key, name string
	missing   func(ws int) []int // plugin indexes absent from the box
}

func (o options) scenarios() []scenario {
	allOf := func(int) []int {
		out := make([]int, o.plugins)
		for i := range out {
			out[i] = i
		}
		return out
	}
	tenth := func(ws int) []int {
		if ws%10 == 0 {
			return []int{ws % o.plugins}
		}
		return nil
	}
	return []scenario{
		{"boot", "1 boot-installed fleet", func(int) []int { return nil }},
		{"fresh", "2 fresh fleet, all absent", allOf},
		{"mixed", "3 mixed: 10 % missing one", tenth},
	}
}

// variant is who reconciles a scenario: ours on one worker, ours on a
// pool, or the naive path.
type variant struct {
	key, label string
	naive      bool
	workers    int
}

func (o options) variants() []variant {
	out := []variant{{"ours", "ours", false, 1}}
	if o.pool > 0 {
		out = append(out, variant{"pool", fmt.Sprintf("ours, %d workers", o.pool), false, o.pool})
	}
	if o.naive {
		out = append(out, variant{"naive", "naive", true, 1})
	}
	return out
}

// runScenarios measures each scenario wanted in each variant.
func (b *bench) runScenarios(ctx context.Context) ([]result, error) {
	o := b.o
	var rows []result
	for _, sc := range o.scenarios() {
		for _, v := range o.variants() {
			if !o.wants(sc.key, sc.key+":"+v.key) {
				continue
			}
			name := sc.name + ", " + v.label
			step("%s: %d workspaces × %d plugins", name, o.workspaces, o.plugins)
			r, err := b.measure(ctx, sc.key+"-"+v.key, v, sc.missing)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			r.name = name
			rows = append(rows, r)
			step("%s: %s", name, r.wall.Round(time.Millisecond))
		}
	}
	return rows, nil
}

// runFloors measures the orchestration and I/O floors, if wanted.
func (b *bench) runFloors(ctx context.Context) (orch, io result, err error) {
	if b.o.wants("floor") {
		step("orchestration floor: the same workflows with no-op activities")
		if orch, err = b.orchestrationFloor(ctx); err != nil {
			return orch, io, err
		}
		orch.name = "orchestration floor"
		step("orchestration floor: %s", orch.wall.Round(time.Millisecond))
	}
	if b.o.wants("io") {
		step("I/O floor: the same probes over SSH, one connection and one command per box, no Temporal")
		if io, err = b.ioFloor(ctx); err != nil {
			return orch, io, err
		}
		io.name = "I/O floor"
		step("I/O floor: %s", io.wall.Round(time.Millisecond))
	}
	return orch, io, nil
}

// printOnly prints the runs this process made, and writes their figures as
// JSON for the parent process when asked.
func printOnly(o options, runs []result) error {
	var out []resultJSON
	for _, r := range runs {
		if r.name == "" {
			continue
		}
		fmt.Printf("%s: wall %.1f s, p50 %.1f s, p95 %.1f s, pushes %d, handshakes %d, box commands %d, events/ws %.0f, actions/ws %.0f, deliveries %d, restarts %d (%d needed), failed %d, worker CPU %.1f s, box CPU %.1f s, server CPU %.1f s, machine CPU %.1f s\n",
			r.name, r.wall.Seconds(), r.p50.Seconds(), r.p95.Seconds(), r.pushes, r.handshakes, r.commands, r.events, r.actions, r.deliveries, r.restarts, r.wantRestarts, r.failed, r.cpu.Seconds(), r.boxCPU.Seconds(), r.selfCPU.Seconds(), r.allCPU.Seconds())
		out = append(out, toJSON(r))
	}
	if o.jsonOut == "" {
		return nil
	}
	data, err := json.Marshal(out)
	if err != nil {
		return err
	}
	return os.WriteFile(o.jsonOut, data, 0o644)
}

// temporal starts a fresh embedded server for one run, so that every run,
// the floor included, starts from the same empty state, and dials it.
func (b *bench) temporal(ctx context.Context) (stop func(), err error) {
	if b.dev, err = devserver.Start(ctx, devserver.Options{FrontendPort: -1, UIPort: -2, HistoryShards: int32(b.o.shards), SearchAttributes: workflows.SearchAttributes()}); err != nil {
		return nil, err
	}
	if b.c, err = client.Dial(client.Options{HostPort: b.dev.FrontendAddress(), Namespace: devserver.Namespace}); err != nil {
		b.dev.Stop()
		return nil, err
	}
	return func() { b.c.Close(); b.dev.Stop() }, nil
}

// boxes starts a fleet with one box per workspace, boot-installed with
// every plugin except missing(i), and registers the workspaces.
func (b *bench) boxes(ctx context.Context, prefix string, missing func(int) []int) (*fleet.Fleet, []string, []*fleet.Box, error) {
	fl, err := fleet.New(b.aws)
	if err != nil {
		return nil, nil, nil, err
	}
	var ids []string
	var boxes []*fleet.Box
	for i := range b.o.workspaces {
		boot := map[string]string{}
		for j, p := range b.plugins {
			if !slices.Contains(missing(i), j) {
				boot[p.Name] = p.Version
			}
		}
		box, err := fl.Boot(ctx, b.cat, boot)
		if err != nil {
			return fl, nil, nil, err
		}
		box.SetLatency(b.o.sshLatency)
		ws := fmt.Sprintf("%s-%04d", prefix, i)
		if err := b.st.UpsertWorkspace(ctx, store.Workspace{Box: box.Workspace(ws)}); err != nil {
			return fl, nil, nil, err
		}
		ids = append(ids, ws)
		boxes = append(boxes, box)
	}
	return fl, ids, boxes, nil
}

// trigger starts every workspace's reconcile at once and waits for all,
// returning the wall time and each workspace's latency.
func (b *bench) trigger(ctx context.Context, ids []string) (time.Duration, []time.Duration, int, error) {
	lat := make([]time.Duration, len(ids))
	failed := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	errs := make(chan error, len(ids))
	for i, ws := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			run, err := workflows.Start(ctx, b.c, workflows.ReconcileInput{WorkspaceID: ws, Plugins: b.plugins})
			if err != nil {
				errs <- err
				return
			}
			if _, err := workflows.Result(ctx, run); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
			lat[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, nil, 0, err
	}
	return time.Since(start), lat, failed, nil
}

// measure runs a scenario with v's worker processes: worker CPU is their
// sum, peak RSS the largest one's.
func (b *bench) measure(ctx context.Context, prefix string, v variant, missing func(int) []int) (result, error) {
	var r result
	stop, err := b.temporal(ctx)
	if err != nil {
		return r, err
	}
	defer stop()
	fl, ids, boxes, err := b.boxes(ctx, prefix, missing)
	if fl != nil {
		defer fl.Close()
	}
	if err != nil {
		return r, err
	}
	for i := range ids {
		if len(missing(i)) > 0 {
			r.wantRestarts++
		}
	}
	cmds, stopWorkers, err := b.startWorkers(ctx, v, fl, prefix)
	defer stopWorkers()
	if err != nil {
		return r, err
	}
	workersCPU := func() (t time.Duration) {
		for _, cmd := range cmds {
			t += procCPU(cmd.Process.Pid, false)
		}
		return t
	}
	cpu0, box0 := workersCPU(), boxesCPU(boxes)
	self0, all0 := procCPU(os.Getpid(), false), machineCPU()
	var profiled chan string
	if profileRun(prefix) {
		profiled = make(chan string, 1)
		go func() { profiled <- b.profileWorker(ctx, prefix) }()
	}
	wall, lat, failed, err := b.trigger(ctx, ids)
	if profiled != nil {
		r.profile = <-profiled
	}
	cpu1 := workersCPU()
	r.selfCPU, r.allCPU = procCPU(os.Getpid(), false)-self0, machineCPU()-all0
	for _, cmd := range cmds {
		r.rssMB = max(r.rssMB, procHWM(cmd.Process.Pid))
	}
	stopWorkers() // the boxes' sessions end with the workers' connections
	if err != nil {
		return r, err
	}
	r.wall, r.cpu, r.failed = wall, cpu1-cpu0, failed
	r.boxCPU = boxesCPU(boxes) - box0
	slices.Sort(lat)
	r.p50, r.p95 = lat[len(lat)/2], lat[len(lat)*95/100]
	for _, box := range boxes {
		r.pushes += b.aws.KeyPushes(box.InstanceID)
		r.handshakes += box.Logins()
		r.commands += box.Commands()
		r.restarts += box.Restarts()
	}
	for _, ws := range ids {
		rows, err := b.st.TrackingRows(ctx, ws)
		if err != nil {
			return r, err
		}
		for _, t := range rows {
			if t.DeliveredAt != nil {
				r.deliveries++
			}
		}
	}
	r.events, r.actions = b.historyEvents(ctx, ids)
	return r, nil
}

// startWorkers starts v's worker processes against this run's server and
// waits until they poll; stop ends them (they drain first), also after an
// error.
func (b *bench) startWorkers(ctx context.Context, v variant, fl *fleet.Fleet, prefix string) (cmds []*exec.Cmd, stop func(), err error) {
	stop = func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
		cmds = nil
	}
	logf, err := os.Create(filepath.Join(b.dir, prefix+"-worker.log"))
	if err != nil {
		return nil, stop, err
	}
	defer logf.Close() // the processes keep their own descriptors
	for range v.workers {
		// Ours is the worker program; the naive path is this program as a
		// worker that dials per operation (-naive-worker).
		cmd := exec.Command(b.bin)
		if v.naive {
			exe, err := os.Executable()
			if err != nil {
				return cmds, stop, err
			}
			cmd = exec.Command(exe, "-naive-worker")
		}
		profiles := ""
		if profileRun(prefix) {
			profiles = b.profileAddr
		}
		cmd.Env = append(append(os.Environ(), fl.WorkerEnv()...),
			"TEMPORAL_ADDRESS="+b.dev.FrontendAddress(), "TEMPORAL_NAMESPACE="+devserver.Namespace,
			"DATABASE_URL="+b.dsn, "CATALOG_DIR="+b.catDir, "MIGRATE=false", "METRICS_ADDR=", "PPROF_ADDR="+profiles,
		)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return cmds, stop, err
		}
		cmds = append(cmds, cmd)
	}
	return cmds, stop, b.polling(ctx, v.workers)
}

// aloneReps is how many times a workspace is reconciled alone.
const aloneReps = 20

// aloneName prefixes the rows of a workspace reconciled alone.
const aloneName = "one workspace alone"

// runAlone measures one workspace reconciled with nothing else running,
// boot-installed and fresh: aloneReps times each, a new box every time, on
// one worker whose connections and caches are warm from the first
// repetitions only as much as a long-running worker's are.
func (b *bench) runAlone(ctx context.Context) ([]result, error) {
	if !b.o.wants("one") {
		return nil, nil
	}
	stop, err := b.temporal(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()
	fl, err := fleet.New(b.aws)
	if err != nil {
		return nil, err
	}
	defer fl.Close()
	_, stopWorkers, err := b.startWorkers(ctx, variant{key: "ours", workers: 1}, fl, "alone")
	defer stopWorkers()
	if err != nil {
		return nil, err
	}
	var out []result
	for _, sc := range []struct {
		name    string
		missing bool
	}{{"boot-installed", false}, {"fresh, all absent", true}} {
		step("%s, %s: %d repetitions", aloneName, sc.name, aloneReps)
		r := result{name: aloneName + ", " + sc.name}
		lat := make([]time.Duration, aloneReps)
		var ids []string
		for i := range aloneReps {
			boot := map[string]string{}
			for _, p := range b.plugins {
				if !sc.missing {
					boot[p.Name] = p.Version
				}
			}
			box, err := fl.Boot(ctx, b.cat, boot)
			if err != nil {
				return nil, err
			}
			box.SetLatency(b.o.sshLatency)
			ws := fmt.Sprintf("alone-%d-%02d", len(out), i)
			ids = append(ids, ws)
			if err := b.st.UpsertWorkspace(ctx, store.Workspace{Box: box.Workspace(ws)}); err != nil {
				return nil, err
			}
			wall, _, failed, err := b.trigger(ctx, []string{ws})
			if err != nil {
				return nil, err
			}
			lat[i], r.failed = wall, r.failed+failed
			r.pushes += b.aws.KeyPushes(box.InstanceID)
			r.handshakes += box.Logins()
			r.commands += box.Commands()
			r.restarts += box.Restarts()
			if sc.missing {
				r.wantRestarts++
			}
		}
		slices.Sort(lat)
		r.p50, r.p95 = lat[len(lat)/2], lat[len(lat)*95/100]
		r.events, r.actions = b.historyEvents(ctx, ids)
		for _, l := range lat {
			r.wall += l
		}
		out = append(out, r)
		step("%s: p50 %s, p95 %s", r.name, r.p50.Round(time.Millisecond), r.p95.Round(time.Millisecond))
	}
	return out, nil
}

// polling waits until Temporal sees n workers polling the activity queue,
// so that a pool's reconciles spread from their start.
func (b *bench) polling(ctx context.Context, n int) error {
	deadline := time.Now().Add(time.Minute)
	for {
		d, err := b.c.DescribeTaskQueue(ctx, workflows.TaskQueue, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
		if err == nil && len(d.GetPollers()) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d workers never polled %s (last: %v)", n, workflows.TaskQueue, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// historyEvents averages the history events and Temporal actions (parent
// and children) of up to ten workspaces' reconciles.
func (b *bench) historyEvents(ctx context.Context, ids []string) (events, actions float64) {
	n, totalEvents, totalActions := 0, 0, 0
	for i, ws := range ids {
		if i%max(1, len(ids)/10) != 0 {
			continue
		}
		id := workflows.ReconcileWorkflowID(ws)
		for _, wid := range append([]string{id}, childIDs(id, b.plugins)...) {
			e, a := b.countEvents(ctx, wid)
			totalEvents, totalActions = totalEvents+e, totalActions+a
		}
		n++
	}
	return float64(totalEvents) / float64(max(n, 1)), float64(totalActions) / float64(max(n, 1))
}

func childIDs(parent string, plugins []workflows.Plugin) []string {
	out := make([]string, len(plugins))
	for i, p := range plugins {
		out[i] = workflows.PluginWorkflowID(parent, p.Name)
	}
	return out
}

// countEvents counts a workflow's history events, and the Temporal actions
// its history shows: its start (a child's included), each signal, each
// activity attempt, each timer, each search-attribute upsert and each
// marker (the version markers). Activity heartbeats, which a service may
// also bill, are not in the history and not counted.
func (b *bench) countEvents(ctx context.Context, id string) (events, actions int) {
	it := b.c.GetWorkflowHistory(ctx, id, "", false, 0)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			break
		}
		events++
		switch e.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
			enumspb.EVENT_TYPE_TIMER_STARTED, enumspb.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES, enumspb.EVENT_TYPE_MARKER_RECORDED:
			actions++
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_STARTED:
			actions += int(max(1, e.GetActivityTaskStartedEventAttributes().GetAttempt()))
		}
	}
	return events, actions
}

func (b *bench) orchestrationFloor(ctx context.Context) (result, error) {
	var r result
	stop, err := b.temporal(ctx)
	if err != nil {
		return r, err
	}
	defer stop()
	n := noop{version: "1.0.0"}
	w := worker.New(b.c, workflows.TaskQueue, service.WorkerOptions(service.Defaults().MaxActivities))
	w.RegisterWorkflow(workflows.ReconcileWorkspace)
	w.RegisterWorkflow(workflows.ReconcilePlugin)
	w.RegisterActivity(&activities.Activities{Box: n, Store: n, Catalog: n})
	if err := w.Start(); err != nil {
		return r, err
	}
	defer w.Stop()
	ids := make([]string, b.o.workspaces)
	for i := range ids {
		ids[i] = fmt.Sprintf("floor-%04d", i)
	}
	self0, all0 := procCPU(os.Getpid(), false), machineCPU()
	wall, lat, failed, err := b.trigger(ctx, ids)
	if err != nil {
		return r, err
	}
	r.selfCPU, r.allCPU = procCPU(os.Getpid(), false)-self0, machineCPU()-all0
	slices.Sort(lat)
	r.wall, r.p50, r.p95, r.failed = wall, lat[len(lat)/2], lat[len(lat)*95/100], failed
	r.events, r.actions = b.historyEvents(ctx, ids)
	return r, nil
}

func (b *bench) ioFloor(ctx context.Context) (result, error) {
	var r result
	fl, ids, boxes, err := b.boxes(ctx, "iofloor", func(int) []int { return nil })
	if fl != nil {
		defer fl.Close()
	}
	if err != nil {
		return r, err
	}
	sdk := b.aws.SDKConfig()
	access, err := eic.New(eic.Config{EC2: ec2.NewFromConfig(sdk), InstanceConnect: ec2instanceconnect.NewFromConfig(sdk), Port: fl.Port})
	if err != nil {
		return r, err
	}
	defer access.Close()
	ops := onbox.New(access, onbox.Config{})
	defer ops.Close()
	box0 := boxesCPU(boxes)
	lat := make([]time.Duration, len(ids))
	errs := make(chan error, len(boxes)*len(b.plugins))
	var wg sync.WaitGroup
	start := time.Now()
	for i, box := range boxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			// Every plugin's manifest at once, as the probes of a reconcile
			// ask for them: the reads of one box share commands.
			target := reconcile.Box{InstanceID: box.InstanceID, OSUser: fl.User(), HostKey: box.HostKey, PluginRoot: box.PluginRoot}
			var reads sync.WaitGroup
			for _, p := range b.plugins {
				reads.Add(1)
				go func() {
					defer reads.Done()
					if _, err := ops.ReadManifest(ctx, target, p.Name); err != nil {
						errs <- err
					}
				}()
			}
			reads.Wait()
			lat[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return r, err
	}
	r.wall = time.Since(start)
	slices.Sort(lat)
	r.p50, r.p95 = lat[len(lat)/2], lat[len(lat)*95/100]
	st := access.Stats()
	r.pushes, r.handshakes, r.commands = int(st.KeyPushes), int(st.Handshakes), int(st.Commands)
	_ = access.Close()
	r.boxCPU = boxesCPU(boxes) - box0
	return r, nil
}

// boxesCPU is the CPU time the boxes' sshd processes have used with every
// session and command of theirs that has ended: the work that, on a real
// fleet, runs on the boxes rather than beside the reconciler. Read after
// the connections are closed (a box's session ends with its connection).
func boxesCPU(boxes []*fleet.Box) time.Duration {
	time.Sleep(time.Second) // let sshd reap the sessions of closed connections
	var t time.Duration
	for _, box := range boxes {
		if pid := box.SSHDPid(); pid != 0 {
			t += procCPU(pid, true)
		}
	}
	return t
}

// machineCPU is the CPU time all processors have spent busy (user, nice,
// system, irq, softirq, steal).
func machineCPU() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])
	ticks := 0
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		if i < len(f) {
			n, _ := strconv.Atoi(f[i])
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// procCPU is the user+system CPU time of a process; with children, also
// that of its descendants that have ended and been waited for.
func procCPU(pid int, children bool) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	fields := []int{11, 12} // utime, stime (stat fields 14, 15)
	if children {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	ticks := 0
	for _, i := range fields {
		n, _ := strconv.Atoi(f[i])
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

func procHWM(pid int) float64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func godebug() string {
	if v := os.Getenv("GODEBUG"); v != "" {
		return "GODEBUG=" + v
	}
	return "no GODEBUG"
}

func machine() string {
	cpu := ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])
		if len(f) >= 2 {
			kb, _ := strconv.Atoi(f[1])
			mem = fmt.Sprintf("%.0f GiB", float64(kb)/1024/1024)
		}
	}
	return fmt.Sprintf("%d CPUs (%s), %s memory, %s/%s, %s", runtime.NumCPU(), cpu, mem, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// networkFloor is one workspace's time on the wire at the injected
// latencies: DescribeInstances ∥ SendSSHPublicKey (one AWS call; they do
// not depend on each other), the TCP handshake (one round trip), the SSH
// handshake and authentication (two), and a round trip per command that
// must reach the box: the probe, and for a fresh box the install and the
// restart.
func networkFloor(o options, fresh bool) time.Duration {
	commands := time.Duration(1)
	if fresh {
		commands = 3
	}
	return o.awsLatency + (3+commands)*2*o.sshLatency
}

func render(o options, rows []result, orch, io result, sweep sweepResult) string {
	var alone []result
	rows = slices.DeleteFunc(slices.Clone(rows), func(r result) bool {
		if strings.HasPrefix(r.name, aloneName) {
			alone = append(alone, r)
			return true
		}
		return false
	})
	var s strings.Builder
	fmt.Fprintf(&s, "# Benchmarks\n\nWritten by `make bench` on %s.\n\nMachine: %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), machine())
	fmt.Fprintf(&s, "Setup: %d workspaces × %d plugins, one simulated box each; +%s on every AWS API call, +%s each way on every SSH link; each run in its own process with a fresh embedded Temporal (in-memory SQLite, %d history shards, eager activities, unused visibility indexes dropped, GOGC 400, %s), private Postgres; the worker as its own process (worker CPU and peak RSS are that process's; on the pool rows, CPU is the workers' sum and peak RSS the largest worker's, and the workers share the same cores, so a pool row shows what box affinity costs, not added capacity). Box CPU is what the simulated boxes' sshd, sessions and install/restart commands used: work a real fleet does on the boxes, which here shares the same cores as the server and the worker. Server process CPU is this benchmark's own process: the embedded Temporal server, the fake AWS endpoint and the link latency proxies (for the orchestration floor, also its in-process worker). Machine CPU is all processors' busy time during the run (%d cores: at most %d s per second of wall time).\n\n",
		o.workspaces, o.plugins, o.awsLatency, o.sshLatency, o.shards, godebug(), runtime.NumCPU(), runtime.NumCPU())
	s.WriteString("| run | wall | reconciles/min | p50 | p95 | key pushes / ws | SSH handshakes / ws | box commands / ws | history events / ws | Temporal actions / ws | deliveries | restarts (needed) | failed | worker CPU | worker peak RSS | box CPU | server process CPU | machine CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	w := float64(o.workspaces)
	line := func(r result, pushes, hs, cmds, deliv, restarts, cpu, rss string) {
		secs := func(d time.Duration) string {
			if d <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f s", d.Seconds())
		}
		fmt.Fprintf(&s, "| %s | %.1f s | %.0f | %.2f s | %.2f s | %s | %s | %s | %.0f | %.0f | %s | %s | %d | %s | %s | %s | %s | %s |\n",
			r.name, r.wall.Seconds(), w/r.wall.Minutes(), r.p50.Seconds(), r.p95.Seconds(), pushes, hs, cmds, r.events, r.actions, deliv, restarts, r.failed, cpu, rss,
			secs(r.boxCPU), secs(r.selfCPU), secs(r.allCPU))
	}
	for _, r := range rows {
		line(r, fmt.Sprintf("%.2f", float64(r.pushes)/w), fmt.Sprintf("%.2f", float64(r.handshakes)/w), fmt.Sprintf("%.1f", float64(r.commands)/w),
			strconv.Itoa(r.deliveries), fmt.Sprintf("%d (%d)", r.restarts, r.wantRestarts), fmt.Sprintf("%.1f s", r.cpu.Seconds()), fmt.Sprintf("%.0f MB", r.rssMB))
	}
	orch.name, io.name = "orchestration floor (no-op activities)", "I/O floor (SSH only, 1 command per box)"
	line(orch, "-", "-", "-", "-", "-", "-", "-")
	line(io, fmt.Sprintf("%.2f", float64(io.pushes)/w), fmt.Sprintf("%.2f", float64(io.handshakes)/w), fmt.Sprintf("%.1f", float64(io.commands)/w), "-", "-", "-", "-")

	mark := func(ok bool) string {
		if ok {
			return "✓"
		}
		return "✗"
	}
	if len(alone) > 0 {
		fmt.Fprintf(&s, "\nOne workspace alone: %d repetitions each, a new box every time, nothing else running, on one warm worker; time from the trigger to the result. The network floor is the injected latencies' minimum: DescribeInstances ∥ SendSSHPublicKey (%s), the TCP handshake (1 round trip of %s), the SSH handshake and authentication (2), and a round trip per command: the probe, for a fresh box also the install and the restart.\n\n", aloneReps, o.awsLatency, 2*o.sshLatency)
		s.WriteString("| one workspace alone | p50 | p95 | network floor | p50 / floor ≤ 2 | box commands / run | key pushes / run | SSH handshakes / run | history events / run | Temporal actions / run | restarts (needed) | failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range alone {
			floor := networkFloor(o, strings.Contains(r.name, "fresh"))
			ratio := r.p50.Seconds() / floor.Seconds()
			fmt.Fprintf(&s, "| %s | %.0f ms | %.0f ms | %.0f ms | %s %.2f | %.1f | %.2f | %.2f | %.0f | %.0f | %d (%d) | %d |\n", strings.TrimPrefix(r.name, aloneName+", "),
				ms(r.p50), ms(r.p95), ms(floor), mark(ratio <= 2), ratio, float64(r.commands)/aloneReps, float64(r.pushes)/aloneReps, float64(r.handshakes)/aloneReps,
				r.events, r.actions, r.restarts, r.wantRestarts, r.failed)
		}
	}
	s.WriteString("\nTargets (✓ met, ✗ missed) per scenario, ours against the naive path and the floors. The last column compares CPU time rather than wall time: ours' machine CPU without the boxes' own work, over the orchestration floor's.\n\n")
	s.WriteString("| scenario | restarts = needed | ≤ 1 key push / ws | ≤ 1 handshake / ws | naive / ours handshakes ≥ 5× | naive / ours wall ≥ 2× | ours / orchestration floor ≤ 1.25 | ours / I/O floor | ours CPU without boxes / floor CPU |\n|---|---|---|---|---|---|---|---|---|\n")
	for i := 0; i < len(rows); i++ {
		ours := rows[i]
		if !strings.HasSuffix(ours.name, ", ours") {
			continue
		}
		vsNaive, hs := "-", "-"
		if j := slices.IndexFunc(rows, func(r result) bool { return r.name == strings.TrimSuffix(ours.name, "ours")+"naive" }); j >= 0 {
			n := rows[j]
			speed := n.wall.Seconds() / ours.wall.Seconds()
			fewer := float64(n.handshakes) / float64(max(ours.handshakes, 1))
			vsNaive = fmt.Sprintf("%s %.2f×", mark(speed >= 2), speed)
			hs = fmt.Sprintf("%s %.1f×", mark(fewer >= 5), fewer)
		}
		floor := ours.wall.Seconds() / orch.wall.Seconds()
		cpu := "-"
		if orch.allCPU > 0 {
			cpu = fmt.Sprintf("%.2f", (ours.allCPU-ours.boxCPU).Seconds()/orch.allCPU.Seconds())
		}
		fmt.Fprintf(&s, "| %s | %s %d (%d) | %s %.2f | %s %.2f | %s | %s | %s %.2f | %.1f | %s |\n", strings.TrimSuffix(ours.name, ", ours"),
			mark(ours.restarts == ours.wantRestarts), ours.restarts, ours.wantRestarts,
			mark(ours.pushes <= o.workspaces), float64(ours.pushes)/w, mark(ours.handshakes <= o.workspaces), float64(ours.handshakes)/w,
			hs, vsNaive, mark(floor <= 1.25), floor, ours.wall.Seconds()/io.wall.Seconds(), cpu)
	}
	if o.pool > 0 {
		fmt.Fprintf(&s, "\nThe pool: each scenario on %d worker processes beside one. Box affinity sends a reconcile's box work to one worker, so the pool should cost the box what one worker does.\n\n", o.pool)
		s.WriteString("| scenario | workers | wall | key pushes / ws | SSH handshakes / ws | restarts (needed) | ≤ 1 push and ≤ 1 handshake / ws |\n|---|---|---|---|---|---|---|\n")
		for _, r := range rows {
			name, workers := strings.TrimSuffix(r.name, ", ours"), "1"
			if before, after, ok := strings.Cut(r.name, ", ours, "); ok {
				name, workers = before, strings.TrimSuffix(after, " workers")
			} else if !strings.HasSuffix(r.name, ", ours") {
				continue
			}
			fmt.Fprintf(&s, "| %s | %s | %.1f s | %.2f | %.2f | %d (%d) | %s |\n", name, workers, r.wall.Seconds(), float64(r.pushes)/w, float64(r.handshakes)/w,
				r.restarts, r.wantRestarts, mark(r.pushes <= o.workspaces && r.handshakes <= o.workspaces && r.restarts == r.wantRestarts))
		}
	}
	for _, r := range rows {
		if r.profile != "" {
			fmt.Fprintf(&s, "\nWhere the worker's CPU goes, %s: a CPU profile of its first %d s from the trigger (the worker's `PPROF_ADDR`; `go tool pprof -top`). Over the whole run the worker used %.1f s of CPU, the boxes %.1f s, the server process %.1f s, the machine %.1f s.\n\n```\n%s\n```\n",
				r.name, profileSeconds, r.cpu.Seconds(), r.boxCPU.Seconds(), r.selfCPU.Seconds(), r.allCPU.Seconds(), r.profile)
		}
	}
	renderSweep(&s, sweep)
	fmt.Fprintf(&s, "\nOrchestration floor for %d × %d: %.1f s (target ≤ 40 s for 200 × 8: %s).\n", o.workspaces, o.plugins, orch.wall.Seconds(),
		map[bool]string{true: mark(orch.wall <= 40*time.Second), false: "only defined for 200 × 8"}[o.workspaces == 200 && o.plugins == 8])
	return s.String()
}
