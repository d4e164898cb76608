package service

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
)

// The metrics address serves the connection cache's gauge and no profiles;
// the profile address serves Go's profiles (not the command line, which may
// hold a database URL), so an operator can see where a live worker spends
// its CPU.
func TestMetricsAndProfileAddresses(t *testing.T) {
	access, err := eic.New(eic.Config{EC2: ec2.New(ec2.Options{Region: "us-east-1"}), InstanceConnect: ec2instanceconnect.New(ec2instanceconnect.Options{Region: "us-east-1", Credentials: aws.AnonymousCredentials{}})})
	require.NoError(t, err)
	defer access.Close()
	m, err := newMetrics(access)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := m.Serve(ctx, "127.0.0.1:0")
	require.NoError(t, err)
	profiles, err := ServeProfiles(ctx, "127.0.0.1:0")
	require.NoError(t, err)
	get := func(addr, path string, want int) string {
		resp, err := http.Get("http://" + addr + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, want, resp.StatusCode, "%s: %s", path, body)
		return string(body)
	}
	require.Contains(t, get(addr, "/metrics", http.StatusOK), "ssh_connections_open 0")
	get(addr, "/debug/pprof/", http.StatusNotFound)
	require.True(t, strings.Contains(get(profiles, "/debug/pprof/", http.StatusOK), "goroutine"), "the profile index")
	require.NotEmpty(t, get(profiles, "/debug/pprof/profile?seconds=1", http.StatusOK), "a CPU profile")
	get(profiles, "/debug/pprof/cmdline", http.StatusNotFound)
}
