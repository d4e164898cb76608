// Package devserver embeds a real Temporal server (go.temporal.io/server,
// SQLite persistence in a file, so runs survive a restart) and the Temporal
// Web UI (github.com/temporalio/ui-server) for development, on 127.0.0.1.
package devserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/log"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/testing/freeport"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	uioptions "github.com/temporalio/ui-server/v2/server/server_options"
)

// Default ports: clear of a local Temporal dev server's 7233 and 8233.
const (
	DefaultFrontendPort = 17233
	DefaultUIPort       = 18233
	Namespace           = "default"
)

// Options configure the dev server.
type Options struct {
	// StateDir holds the SQLite database; empty keeps state in memory.
	StateDir     string
	FrontendPort int // 0: DefaultFrontendPort; -1: any free port
	UIPort       int // 0: DefaultUIPort; -1: any free port; -2: no UI
	// HistoryShards: more shards let more workflows progress in parallel.
	HistoryShards    int32
	SearchAttributes map[string]enumspb.IndexedValueType
	Logger           log.Logger
}

// Server is a running dev server.
type Server struct {
	server   temporal.Server
	ui       *uiserver.Server
	frontend string
	uiURL    string
	dbDSN    string // the SQLite database, for checks
}

// Start starts Temporal and, unless disabled, the Web UI, and waits until
// the frontend answers.
func Start(ctx context.Context, o Options) (*Server, error) {
	frontendPort, err := pickPort(o.FrontendPort, DefaultFrontendPort)
	if err != nil {
		return nil, err
	}
	if o.HistoryShards == 0 {
		o.HistoryShards = 1
	}
	if o.Logger == nil {
		o.Logger = log.NewNoopLogger()
	}
	sqlCfg := config.SQL{PluginName: sqliteplugin.PluginName, ConnectAttributes: map[string]string{}}
	if o.StateDir == "" {
		sqlCfg.ConnectAttributes["mode"], sqlCfg.ConnectAttributes["cache"] = "memory", "shared"
		sqlCfg.DatabaseName = "devserver-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	} else {
		if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
			return nil, err
		}
		sqlCfg.DatabaseName = filepath.Join(o.StateDir, "temporal.db")
		sqlCfg.ConnectAttributes["mode"] = "rwc"
		sqlCfg.ConnectAttributes["_journal_mode"] = "wal"
		sqlCfg.ConnectAttributes["_synchronous"] = "2"
	}
	// An in-memory database gets its schema from the SQLite plugin itself
	// (its visibility indexes are trimmed once the server is up); a new
	// file needs it set up.
	if o.StateDir != "" {
		if _, err := os.Stat(sqlCfg.DatabaseName); errors.Is(err, os.ErrNotExist) {
			if err := sqlite.SetupSchema(&sqlCfg); err != nil {
				return nil, fmt.Errorf("temporal schema: %w", err)
			}
		}
		if err := trimVisibilityIndexes(ctx, fileDSN(sqlCfg.DatabaseName)); err != nil {
			return nil, err
		}
	}
	ns, err := sqlite.NewNamespaceConfig("active", Namespace, false, o.SearchAttributes)
	if err != nil {
		return nil, err
	}
	if err := sqlite.CreateNamespaces(&sqlCfg, ns); err != nil {
		return nil, fmt.Errorf("temporal namespace: %w", err)
	}

	cfg, err := serverConfig(frontendPort, sqlCfg, o.HistoryShards)
	if err != nil {
		return nil, err
	}
	authorizer, err := authorization.GetAuthorizerFromConfig(&cfg.Global.Authorization)
	if err != nil {
		return nil, err
	}
	claimMapper, err := authorization.GetClaimMapperFromConfig(&cfg.Global.Authorization, o.Logger)
	if err != nil {
		return nil, err
	}
	srv, err := temporal.NewServer(
		temporal.WithConfig(cfg),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithLogger(o.Logger),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claimMapper }),
		temporal.WithDynamicConfigClient(dynamicconfig.StaticClient{
			dynamicconfig.ForceSearchAttributesCacheRefreshOnRead.Key(): []dynamicconfig.ConstrainedValue{{Value: true}},
			// One process serves every task queue: partitions would only
			// add forwarding between them.
			dynamicconfig.MatchingNumTaskqueueReadPartitions.Key():  []dynamicconfig.ConstrainedValue{{Value: 1}},
			dynamicconfig.MatchingNumTaskqueueWritePartitions.Key(): []dynamicconfig.ConstrainedValue{{Value: 1}},
			// An activity scheduled by a workflow task goes back to the
			// worker that completed it, when it has a free slot, in the
			// same response: no transfer task, no matching round trip.
			dynamicconfig.EnableActivityEagerExecution.Key(): []dynamicconfig.ConstrainedValue{{Value: true}},
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("temporal server: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("start temporal server: %w", err)
	}
	s := &Server{server: srv, frontend: fmt.Sprintf("127.0.0.1:%d", frontendPort), dbDSN: fileDSN(sqlCfg.DatabaseName)}
	if err := s.waitReady(ctx); err != nil {
		_ = srv.Stop()
		return nil, err
	}
	if o.StateDir == "" {
		s.dbDSN = "file:" + sqlCfg.DatabaseName + "?mode=memory&cache=shared"
		if err := trimVisibilityIndexes(ctx, s.dbDSN); err != nil {
			_ = srv.Stop()
			return nil, err
		}
	}

	if o.UIPort != -2 {
		uiPort, err := pickPort(o.UIPort, DefaultUIPort)
		if err != nil {
			s.Stop()
			return nil, err
		}
		s.ui = uiserver.NewServer(uioptions.WithConfigProvider(&uiconfig.Config{
			Host:                "127.0.0.1",
			Port:                uiPort,
			TemporalGRPCAddress: s.frontend,
			EnableUI:            true,
			DefaultNamespace:    Namespace,
			HideLogs:            true,
			DisableNewsFetch:    true,
		}))
		go func() { _ = s.ui.Start() }()
		s.uiURL = fmt.Sprintf("http://127.0.0.1:%d", uiPort)
		if err := waitHTTP(ctx, s.uiURL+"/healthz"); err != nil {
			s.Stop()
			return nil, fmt.Errorf("web ui: %w", err)
		}
	}
	return s, nil
}

// FrontendAddress is the gRPC address clients and workers dial.
func (s *Server) FrontendAddress() string { return s.frontend }

// UIURL is the Web UI's base URL ("" without UI).
func (s *Server) UIURL() string { return s.uiURL }

// WorkflowURL is the Web UI page of one workflow run.
func (s *Server) WorkflowURL(workflowID, runID string) string {
	return fmt.Sprintf("%s/namespaces/%s/workflows/%s/%s/history", s.uiURL, Namespace, workflowID, runID)
}

// Stop stops the UI and the server.
func (s *Server) Stop() {
	if s.ui != nil {
		s.ui.Stop()
	}
	_ = s.server.Stop()
}

func (s *Server) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := client.Dial(client.Options{HostPort: s.frontend, Namespace: Namespace})
		if err == nil {
			_, err = c.CheckHealth(ctx, &client.CheckHealthRequest{})
			if err == nil {
				_, err = c.WorkflowService().GetSystemInfo(ctx, nil)
			}
			c.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("temporal frontend on %s not ready: %w", s.frontend, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func waitHTTP(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready: %w", url, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// unusedVisibilityIndexes are the indexes of Temporal's SQLite visibility
// table on columns nothing here filters or sorts on: pre-allocated custom
// attributes of types this project does not register (bool, datetime,
// double, int), sizes and counters, and system attributes of features a
// dev server does not use (batcher, schedule pausing, worker deployments).
// Every visibility write (start, upsert, close of each of a reconcile's
// workflows) is a REPLACE that updates all 61 indexes; without these 38
// the visibility queue costs about half. Queries on those columns still
// work, by a scan. Kept: the default listing, workflow ID/type, status,
// task queue, parent/root workflow, schedules, namespace division and the
// keyword attributes (WorkspaceId, InstanceId, ReconcileOutcome).
var unusedVisibilityIndexes = strings.Fields(`
	by_history_length by_history_size_bytes by_execution_duration by_state_transition_count
	by_parent_run_id by_root_run_id by_batcher_user
	by_temporal_scheduled_start_time by_temporal_schedule_paused by_temporal_pause_info
	by_temporal_worker_deployment_version by_temporal_workflow_versioning_behavior by_temporal_worker_deployment
	by_bool_01 by_bool_02 by_bool_03 by_datetime_01 by_datetime_02 by_datetime_03
	by_double_01 by_double_02 by_double_03 by_int_01 by_int_02 by_int_03
	by_temporal_bool_01 by_temporal_bool_02 by_temporal_datetime_01 by_temporal_datetime_02
	by_temporal_double_01 by_temporal_double_02 by_temporal_int_01 by_temporal_int_02
	by_temporal_keyword_01 by_temporal_keyword_02 by_temporal_keyword_03 by_temporal_keyword_04
	by_temporal_low_cardinality_keyword_01`)

// fileDSN opens the SQLite file read-write; a second connection to a file
// the running server writes waits for its locks instead of failing busy.
func fileDSN(path string) string { return "file:" + path + "?mode=rw&_pragma=busy_timeout(10000)" }

// trimVisibilityIndexes drops unusedVisibilityIndexes from the database at
// dsn (SQLite, the driver the server's plugin registers). Idempotent: a
// dropped index stays dropped. A shared in-memory database may be briefly
// locked by the running server, so a locked table is retried.
func trimVisibilityIndexes(ctx context.Context, dsn string) error {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("temporal visibility indexes: %w", err)
	}
	defer db.Close()
	deadline := time.Now().Add(30 * time.Second)
	for _, idx := range unusedVisibilityIndexes {
		for {
			_, err = db.ExecContext(ctx, "DROP INDEX IF EXISTS "+idx)
			if err == nil || !strings.Contains(err.Error(), "locked") || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("temporal visibility index %s: %w", idx, err)
		}
	}
	return nil
}

// pickPort returns want, or def for 0, or a free port for -1; a busy port
// is an error that names it.
func pickPort(want, def int) (int, error) {
	if want == 0 {
		want = def
	}
	if want < 0 {
		return freePort()
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", want))
	if err != nil {
		return 0, fmt.Errorf("port %d is busy (choose another with a flag): %w", want, err)
	}
	ln.Close()
	return want, nil
}

// freePort returns a port that the kernel will not hand out again for a
// while (it is left in TIME_WAIT), so that the services started one after
// another, and other processes, do not collide on it.
func freePort() (int, error) { return freeport.MustGetFreePort(), nil }

// serverConfig is a single-process cluster on 127.0.0.1: frontend on port,
// the other services and membership on free ports.
func serverConfig(frontendPort int, sqlCfg config.SQL, shards int32) (*config.Config, error) {
	service := func(grpcPort int) (config.Service, error) {
		var err error
		if grpcPort == 0 {
			if grpcPort, err = freePort(); err != nil {
				return config.Service{}, err
			}
		}
		membership, err := freePort()
		if err != nil {
			return config.Service{}, err
		}
		return config.Service{RPC: config.RPC{GRPCPort: grpcPort, MembershipPort: membership, BindOnIP: "127.0.0.1"}}, nil
	}
	services := map[string]config.Service{}
	for name, port := range map[string]int{"frontend": frontendPort, "history": 0, "matching": 0, "worker": 0} {
		svc, err := service(port)
		if err != nil {
			return nil, err
		}
		services[name] = svc
	}
	pprof, err := freePort()
	if err != nil {
		return nil, err
	}
	frontend := fmt.Sprintf("127.0.0.1:%d", frontendPort)
	return &config.Config{
		Global: config.Global{
			Membership: config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: "127.0.0.1"},
			PProf:      config.PProf{Port: pprof},
		},
		Persistence: config.Persistence{
			DefaultStore: sqliteplugin.PluginName, VisibilityStore: sqliteplugin.PluginName,
			NumHistoryShards: shards,
			DataStores:       map[string]config.DataStore{sqliteplugin.PluginName: {SQL: &sqlCfg}},
		},
		ClusterMetadata: &cluster.Config{
			EnableGlobalNamespace: false, FailoverVersionIncrement: 10,
			MasterClusterName: "active", CurrentClusterName: "active",
			ClusterInformation: map[string]cluster.ClusterInformation{
				"active": {Enabled: true, InitialFailoverVersion: 1, RPCAddress: frontend},
			},
		},
		DCRedirectionPolicy: config.DCRedirectionPolicy{Policy: "noop"},
		Services:            services,
		Archival: config.Archival{
			History:    config.HistoryArchival{State: "disabled"},
			Visibility: config.VisibilityArchival{State: "disabled"},
		},
		NamespaceDefaults: config.NamespaceDefaults{Archival: config.ArchivalNamespaceDefaults{
			History:    config.HistoryArchivalNamespaceDefaults{State: "disabled"},
			Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"},
		}},
		PublicClient: config.PublicClient{HostPort: frontend},
	}, nil
}
