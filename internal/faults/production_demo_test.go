package faults

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/devserver"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/scenario"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// The demo's five workspaces on the production shape: temporal-server,
// three worker processes, the Web UI server as its own process, and the
// starter as an operator runs it (it ships in the worker's image, so it
// runs with the compose worker's environment).

// startUI runs the compose temporal-ui service as its own process: the UI
// server built from the pinned ui-server module, with the config its image
// renders from the environment (config/docker.yaml); only the port and the
// frontend's address are this machine's.
func (h *harness) startUI() string {
	t := h.t
	productionBins(t)
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/temporalio/ui-server/v2").Output()
	require.NoError(t, err)
	port := strconv.Itoa(freeLowPort(t))
	cmd := exec.Command(filepath.Join(binDir, "temporal-ui-server"), "--root", strings.TrimSpace(string(dir)), "--env", "docker", "start")
	cmd.Env = serviceEnv(t, "temporal-ui", map[string]string{"TEMPORAL_ADDRESS": h.frontend(), "TEMPORAL_UI_PORT": port})
	logf, err := os.Create(filepath.Join(h.dir, "temporal-ui.log"))
	require.NoError(t, err)
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done })
	base := "http://127.0.0.1:" + port
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, time.Minute, 100*time.Millisecond, "the Web UI never answered")
	return base
}

// starter runs the starter binary as an operator would, with the compose
// worker's environment, and returns its standard output.
func (h *harness) starter(args ...string) ([]byte, error) {
	productionBins(h.t)
	cmd := exec.Command(filepath.Join(binDir, "starter"), args...)
	cmd.Env = h.productionWorkerEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("starter %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// publishScenarioBundles adds the scenario's bundles the harness has not
// published.
func (h *harness) publishScenarioBundles() {
	for _, p := range scenario.Bundles() {
		if _, err := os.Stat(filepath.Join(h.catDir, p.Name, p.Version)); err == nil {
			continue
		}
		require.NoError(h.t, catalog.Publish(h.catDir, p.Name, p.Version, map[string]string{"bin/run": "#!/bin/sh\necho " + p.String() + "\n"}))
	}
	var err error
	h.cat, err = catalog.New(h.catDir)
	require.NoError(h.t, err)
}

// uiExecutions lists, through the Web UI server's API (what its pages
// call), the runs a visibility query finds, with their status.
func uiExecutions(t *testing.T, base, query string) map[string]string {
	resp, err := http.Get(base + "/api/v1/namespaces/" + devserver.Namespace + "/workflows?query=" + url.QueryEscape(query))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	var list struct {
		Executions []struct {
			Execution struct{ WorkflowID, RunID string }
			Status    string
		}
	}
	require.NoError(t, json.Unmarshal(body, &list), "%s", body)
	out := map[string]string{}
	for _, e := range list.Executions {
		out[e.Execution.WorkflowID] = e.Status
	}
	return out
}

// The demo's five scenarios, triggered with the starter on three workers
// against temporal-server, inspected with the starter and in the Web UI.
func TestProductionShapedDemoScenarios(t *testing.T) {
	h := newHarnessWith(t, true)
	ui := h.startUI()
	h.pool(3)
	h.publishScenarioBundles()
	scs := scenario.Workspaces()
	boxes := map[string]*fleet.Box{}
	for _, sc := range scs {
		boxes[sc.ID] = h.box(sc.ID, sc.Boot)
	}
	args := []string{}
	for _, p := range scenario.Declared {
		args = append(args, "--plugin", p.String())
	}
	// Every workspace at once, as provisioning brings them online.
	results := make([]workflows.ReconcileResult, len(scs))
	errs := make([]error, len(scs))
	var wg sync.WaitGroup
	for i, sc := range scs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := h.starter(append([]string{"reconcile", "--workspace", sc.ID, "--wait", "--json"}, args...)...)
			if err == nil {
				err = json.Unmarshal(out, &results[i])
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	var lines []string
	for i, sc := range scs {
		require.NoError(t, errs[i], sc.ID)
		res := results[i]
		b := boxes[sc.ID]
		require.NoError(t, sc.Check(res.Count(workflows.ActionDelivered), b.Restarts()), "%s (%s): %s", sc.ID, sc.Story, res.Summary)
		h.checkBox(sc.ID, b, scenario.Declared, sc.WantRestarts)
		lines = append(lines, fmt.Sprintf("%s: %d delivered, %d restart", sc.ID, res.Count(workflows.ActionDelivered), b.Restarts()))

		// The operator's view: the declaration reconciled in full.
		out, err := h.starter("status", "--workspace", sc.ID, "--probe=false", "--json")
		require.NoError(t, err)
		var status struct {
			Declaration struct{ Generation, ObservedGeneration int64 }
			Plugins     []struct{ Name, Declared, Tracked string }
		}
		require.NoError(t, json.Unmarshal(out, &status), "%s", out)
		require.Positive(t, status.Declaration.Generation, sc.ID)
		require.Equal(t, status.Declaration.Generation, status.Declaration.ObservedGeneration, "%s: observed", sc.ID)
		require.Len(t, status.Plugins, len(scenario.Declared), sc.ID)
		for _, p := range status.Plugins {
			require.Equal(t, p.Declared, p.Tracked, "%s: %s declared and tracked", sc.ID, p.Name)
		}
	}

	// The Web UI finds every reconcile by its search attribute, completed.
	for _, sc := range scs {
		runs := uiExecutions(t, ui, fmt.Sprintf("WorkspaceId = %q", sc.ID))
		require.Equal(t, "WORKFLOW_EXECUTION_STATUS_COMPLETED", runs[workflows.ReconcileWorkflowID(sc.ID)], "%s in the Web UI: %v", sc.ID, runs)
	}
	out, err := h.starter("list", "--outcome", "restarted")
	require.NoError(t, err)
	for _, sc := range scs {
		require.Equal(t, sc.WantRestarts > 0, strings.Contains(string(out), workflows.ReconcileWorkflowID(sc.ID)), "starter list --outcome restarted:\n%s", out)
	}
	record("production shape: the demo's five workspaces (starter, 3 workers, Web UI server as its own process)",
		strings.Join(lines, "; "),
		"each scenario's deliveries and restarts; rows exact; starter status: observed = declared generation; each run completed in the Web UI's list; starter list --outcome restarted names ws-demo-4 and 5 only")
}
