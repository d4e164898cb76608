package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// profileSeconds is how much of a profiled run the worker's CPU profile
// covers, from the trigger: the fleet's deliveries are under way by then.
const profileSeconds = 30

// profileRun says which run's worker is profiled: ours on one worker in the
// fresh fleet, the scenario furthest from its floor.
func profileRun(prefix string) bool { return prefix == "fresh-ours" }

// profileWorker takes a CPU profile of the run's worker (it serves
// net/http/pprof on PPROF_ADDR) and returns its top functions as pprof
// prints them, or why there is none.
func (b *bench) profileWorker(ctx context.Context, prefix string) string {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", b.profileAddr, profileSeconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "no profile: " + err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "no profile: " + err.Error()
	}
	defer resp.Body.Close()
	file := filepath.Join(b.dir, prefix+".pprof")
	f, err := os.Create(file)
	if err != nil {
		return "no profile: " + err.Error()
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return "no profile: " + err.Error()
	}
	f.Close()
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=15", b.bin, file).Output()
	if err != nil {
		return "no profile: go tool pprof: " + err.Error()
	}
	// Keep pprof's summary and its table; drop the file and build lines.
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// freeAddr is a loopback address with a port free now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
