package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugin-reconciler/plugin-reconciler/internal/devserver"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// The production shape, without containers: Temporal as its own process
// (temporal-server and temporal-sql-tool built from the go.temporal.io/server
// module the project pins, the go.mod tools), its persistence and
// visibility on Postgres set up by the schema job's own commands, and the
// workers as processes; each configured from the environment
// docker-compose.yml gives it. What differs from compose is only where
// things are on this machine, and it is mapped in one place (local):
// hosts and ports, the fake AWS endpoint and the simulated fleet's access
// (direct, its sshd port), the catalog directory, and metrics off (three
// workers share one host).

// composeFile is docker-compose.yml's services as the tests read them.
type composeFile struct {
	Services map[string]struct {
		Environment map[string]string `yaml:"environment"`
		Command     []string          `yaml:"command"`
		Configs     []struct{ Source, Target string }
	} `yaml:"services"`
	Configs map[string]struct{ Content string } `yaml:"configs"`
}

var (
	composeOnce sync.Once
	compose     composeFile
	composeErr  error
)

func readCompose(t *testing.T) composeFile {
	composeOnce.Do(func() {
		var data []byte
		if data, composeErr = os.ReadFile(filepath.Join("..", "..", "docker-compose.yml")); composeErr == nil {
			composeErr = yaml.Unmarshal(data, &compose)
		}
	})
	require.NoError(t, composeErr)
	return compose
}

var composeVar = regexp.MustCompile(`\$\{([A-Z0-9_]+)(?::-([^}]*))?\}`)

// expand resolves compose's ${VAR:-default} to its default (the file's own
// values, not this machine's environment) and $$ to $.
func expand(v string) string {
	v = composeVar.ReplaceAllStringFunc(v, func(m string) string { return composeVar.FindStringSubmatch(m)[2] })
	return strings.ReplaceAll(v, "$$", "$")
}

// serviceEnv is a compose service's environment, expanded, with the local
// overrides on top.
func serviceEnv(t *testing.T, service string, local map[string]string) []string {
	env := map[string]string{}
	for k, v := range readCompose(t).Services[service].Environment {
		env[k] = expand(v)
	}
	for k, v := range local {
		env[k] = v
	}
	out := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

var (
	productionBinsOnce sync.Once
	productionBinsErr  error
)

// productionBins builds, once, what the production shape runs besides the
// worker: temporal-server, temporal-sql-tool and the Web UI server from the
// modules go.mod pins (its tools), and the starter.
func productionBins(t *testing.T) {
	productionBinsOnce.Do(func() {
		for name, pkg := range map[string]string{
			"temporal-server":    "go.temporal.io/server/cmd/server",
			"temporal-sql-tool":  "go.temporal.io/server/cmd/tools/sql",
			"temporal-ui-server": "github.com/temporalio/ui-server/v2/cmd/server",
			"starter":            "../../starter",
		} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg).CombinedOutput()
			if err != nil {
				productionBinsErr = fmt.Errorf("build %s: %v\n%s", name, err, out)
				return
			}
		}
	})
	require.NoError(t, productionBinsErr)
}

// temporalProc is Temporal's server as its own process.
type temporalProc struct {
	env      []string
	frontend string
	logPath  string
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
}

func (p *temporalProc) start(t *testing.T) {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command(filepath.Join(binDir, "temporal-server"), "start")
	cmd.Env, cmd.Stdout, cmd.Stderr = p.env, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	// The frontend answers once the services have joined the ring.
	require.Eventually(t, func() bool {
		select {
		case <-done:
			return true // exited: reported below
		default:
		}
		c, err := client.Dial(client.Options{HostPort: p.frontend, Namespace: devserver.Namespace})
		if err != nil {
			return false
		}
		c.Close()
		return true
	}, 2*time.Minute, 200*time.Millisecond, "the frontend never answered; log: %s", p.logPath)
	select {
	case <-done:
		log, _ := os.ReadFile(p.logPath)
		t.Fatalf("temporal-server exited: %s", tailOf(log, 3000))
	default:
	}
}

// stop ends the server with sig (SIGTERM: graceful; SIGKILL: a crash) and
// waits for it.
func (p *temporalProc) stop(sig syscall.Signal) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func (p *temporalProc) restart(t *testing.T, sig syscall.Signal, down time.Duration) {
	p.stop(sig)
	time.Sleep(down)
	p.start(t)
}

// startProductionTemporal sets Temporal's databases up with the compose
// schema job's commands and starts the server with the compose server's
// environment.
func (h *harness) startProductionTemporal() *temporalProc {
	t := h.t
	productionBins(t)
	pgPort := strconv.Itoa(h.pg.Port)
	password := expand(readCompose(t).Services["temporal"].Environment["POSTGRES_PWD"])
	admin, err := pgx.Connect(ctx(t), h.pg.DSN("postgres"))
	require.NoError(t, err)
	_, err = admin.Exec(ctx(t), `create role temporal login createdb password `+quoteLiteral(password))
	_ = admin.Close(context.Background())
	require.NoError(t, err)

	// The schema job, as compose runs it, against this machine's Postgres
	// and the module's schema files.
	schemaDir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "go.temporal.io/server").Output()
	require.NoError(t, err)
	script := expand(strings.Join(readCompose(t).Services["temporal-schema"].Command, "\n"))
	script = strings.NewReplacer("--ep temporal-db", "--ep 127.0.0.1", "-p 5432", "-p "+pgPort,
		"/etc/temporal/schema", filepath.Join(strings.TrimSpace(string(schemaDir)), "schema")).Replace(script)
	job := exec.Command("sh", "-c", script)
	job.Env = append(serviceEnv(t, "temporal-schema", nil), "PATH="+binDir+":"+os.Getenv("PATH"))
	out, err := job.CombinedOutput()
	require.NoError(t, err, "schema job:\n%s", out)

	local := map[string]string{"POSTGRES_SEEDS": "127.0.0.1", "DB_PORT": pgPort, "BIND_ON_IP": "127.0.0.1"}
	// The compose configs the server mounts, written where it will read
	// them.
	for _, c := range readCompose(t).Services["temporal"].Configs {
		path := filepath.Join(h.dir, filepath.Base(c.Target))
		require.NoError(t, os.WriteFile(path, []byte(readCompose(t).Configs[c.Source].Content), 0o644))
		for k, v := range readCompose(t).Services["temporal"].Environment {
			if v == c.Target {
				local[k] = path
			}
		}
	}
	for _, name := range []string{"FRONTEND_GRPC_PORT", "FRONTEND_HTTP_PORT", "FRONTEND_MEMBERSHIP_PORT",
		"INTERNAL_FRONTEND_GRPC_PORT", "INTERNAL_FRONTEND_HTTP_PORT", "INTERNAL_FRONTEND_MEMBERSHIP_PORT",
		"MATCHING_GRPC_PORT", "MATCHING_MEMBERSHIP_PORT", "HISTORY_GRPC_PORT", "HISTORY_MEMBERSHIP_PORT",
		"WORKER_GRPC_PORT", "WORKER_MEMBERSHIP_PORT", "PROMETHEUS_PORT"} {
		local[name] = strconv.Itoa(freeLowPort(t))
	}
	p := &temporalProc{
		env:      serviceEnv(t, "temporal", local),
		frontend: "127.0.0.1:" + local["FRONTEND_GRPC_PORT"],
		logPath:  filepath.Join(h.dir, "temporal-server.log"),
	}
	p.start(t)
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p
}

// setupNamespace is the compose setup job: the namespace, then the search
// attributes (the job uses the temporal CLI; this uses the same API).
func (h *harness) setupNamespace() {
	t := h.t
	ns, err := client.NewNamespaceClient(client.Options{HostPort: h.frontend()})
	require.NoError(t, err)
	defer ns.Close()
	err = ns.Register(ctx(t), &workflowservice.RegisterNamespaceRequest{Namespace: devserver.Namespace, WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour)})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return workflows.EnsureSearchAttributes(ctx(t), h.client, devserver.Namespace) == nil
	}, time.Minute, 500*time.Millisecond, "search attributes")
	// The frontend's namespace cache refreshes every few seconds: wait
	// until a start is accepted.
	require.Eventually(t, func() bool {
		_, err := h.client.CountWorkflow(ctx(t), &workflowservice.CountWorkflowExecutionsRequest{Namespace: devserver.Namespace})
		return err == nil
	}, time.Minute, 500*time.Millisecond, "namespace ready")
}

// productionWorkerEnv is the compose worker's environment on this machine.
func (h *harness) productionWorkerEnv() []string {
	local := map[string]string{
		"TEMPORAL_ADDRESS": h.frontend(),
		"DATABASE_URL":     h.dsn,
		"CATALOG_DIR":      h.catDir,
		"METRICS_ADDR":     "",
	}
	for _, kv := range h.fleet.WorkerEnv() {
		k, v, _ := strings.Cut(kv, "=")
		local[k] = v
	}
	return serviceEnv(h.t, "worker", local)
}

// Three worker processes on the production shape: 20 fresh workspaces
// cost at most one key push and one handshake each.
func TestProductionShapedPool(t *testing.T) {
	h := newHarnessWith(t, true)
	h.pool(3)
	const n = 20
	boxes := h.freshFleet("prod", n)
	pushesBefore := h.aws.Calls("SendSSHPublicKey")
	start := time.Now()
	h.reconcileAll(boxes, nil)
	pushes := h.aws.Calls("SendSSHPublicKey") - pushesBefore
	total, _ := logins(boxes)
	t.Logf("production shape, 3 workers, %d fresh workspaces in %s: %.2f key pushes and %.2f handshakes per workspace", n, time.Since(start).Round(time.Second), float64(pushes)/n, float64(total)/n)
	require.LessOrEqual(t, pushes, n)
	require.LessOrEqual(t, total, n)
	record("production shape (temporal-server on Postgres, 3 worker processes): 20 fresh workspaces",
		fmt.Sprintf("%.2f key pushes and %.2f SSH handshakes per workspace", float64(pushes)/n, float64(total)/n),
		"every box restarted exactly once; rows exact; ≤ 1.00 push and handshake per workspace")
}

// The server restarted mid-run, gracefully and then by SIGKILL: every run
// completes, every box restarted exactly once.
func TestProductionShapedTemporalRestart(t *testing.T) {
	h := newHarnessWith(t, true)
	h.pool(3)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		boxes := h.freshFleet(fmt.Sprintf("srv-%d", sig), 6)
		for _, b := range boxes {
			b.SetLatency(100 * time.Millisecond)
		}
		h.reconcileAll(boxes, func() {
			require.Eventually(t, func() bool { total, _ := logins(boxes); return total >= 3 }, 2*time.Minute, 5*time.Millisecond)
			h.prod.restart(t, sig, 2*time.Second)
		})
		record(fmt.Sprintf("production shape: temporal-server stopped by %s mid-run and started again", sig),
			"the workers reconnected; all 6 runs completed", "every box restarted exactly once; rows exact")
	}
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func tailOf(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// freeLowPort is a free port below 32768: Temporal stores membership ports
// as a smallint.
func freeLowPort(t *testing.T) int {
	for range 100 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			_ = l.Close()
			return port
		}
	}
	t.Fatal("no free port below 32768")
	return 0
}
