package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/uber-go/tally/v4"
	tallyprom "github.com/uber-go/tally/v4/prometheus"
	"go.temporal.io/sdk/client"
	sdktally "go.temporal.io/sdk/contrib/tally"

	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
)

// Metrics is the worker's Prometheus registry. The SDK's metrics, and the
// counters the workflows and activities emit through the SDK's metrics
// handler (plugin_probe_total{result}, plugin_delivery_total,
// box_restart_total{reason}, box_restart_skipped_total{reason},
// box_restart_done_total), reach it
// through tally's Prometheus reporter; box access's eic_key_push_total and
// ssh_handshake_total are read from its counters at scrape time.
type Metrics struct {
	Registry *prometheus.Registry
	Handler  client.MetricsHandler
	closer   func() error
}

func newMetrics(access *eic.Access) (*Metrics, error) {
	reg := prometheus.NewRegistry()
	reporter := tallyprom.NewReporter(tallyprom.Options{Registerer: reg})
	scope, closer := tally.NewRootScope(tally.ScopeOptions{
		CachedReporter:  reporter,
		Separator:       tallyprom.DefaultSeparator,
		SanitizeOptions: &sdktally.PrometheusSanitizeOptions,
	}, time.Second)
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "eic_key_push_total", Help: "SSH public keys pushed with EC2 Instance Connect SendSSHPublicKey."},
			func() float64 { return float64(access.Stats().KeyPushes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ssh_handshake_total", Help: "SSH handshakes completed with boxes."},
			func() float64 { return float64(access.Stats().Handshakes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ssh_connections_open", Help: "SSH connections to boxes held now, in use or idle (at most MaxIdle idle)."},
			func() float64 { return float64(access.Stats().Open) }),
	} {
		if err := reg.Register(c); err != nil {
			_ = closer.Close()
			return nil, err
		}
	}
	return &Metrics{Registry: reg, Handler: sdktally.NewMetricsHandler(scope), closer: closer.Close}, nil
}

// Serve serves /metrics on addr until ctx ends; it returns the address
// actually bound (addr may use port 0).
func (m *Metrics) Serve(ctx context.Context, addr string) (string, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	return serveHTTP(ctx, "metrics", addr, mux)
}

// ServeProfiles serves Go's profiles under /debug/pprof/ (net/http/pprof:
// where a live worker spends its CPU, its goroutines and allocations; stack
// traces and counts, never memory contents, and not the command line) on
// addr until ctx ends, apart from the metrics: they are unauthenticated and
// a CPU profile or trace costs the worker, so the address is the
// operator's to keep on loopback. It returns the address actually bound.
func ServeProfiles(ctx context.Context, addr string) (string, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serveHTTP(ctx, "profiles", addr, mux)
}

// serveHTTP serves h on addr until ctx ends.
func serveHTTP(ctx context.Context, what, addr string, h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s listen on %s: %w", what, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the listener was closed with the context
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr().String(), nil
}
