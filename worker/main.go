// Command worker runs the plugin reconciler's Temporal worker.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := service.FromEnv()
	if err != nil {
		return err
	}
	cfg.Flags(flag.CommandLine)
	flag.Parse()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return service.Run(context.Background(), cfg, logger)
}
