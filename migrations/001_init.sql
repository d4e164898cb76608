-- Workspaces and their boxes, the tracking rows, and the restart ledger.

create table workspaces (
  id                    text primary key check (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
  instance_id           text not null unique check (instance_id ~ '^i-[a-f0-9]{8,17}$'),
  region                text not null,
  availability_zone     text not null default '',
  os_user               text not null default 'ubuntu',
  plugin_root           text not null default '/opt/agent/plugins',
  -- Pinned SSH host key, authorized_keys format; null until trusted on first use.
  host_key              text,
  -- Set when a delivery may need a restart; cleared only after a verified restart.
  restart_pending_since timestamptz,
  status                text not null default 'active' check (status in ('active', 'suspended', 'deleted')),
  created_at            timestamptz not null default now(),
  updated_at            timestamptz not null default now()
);

create table workspace_plugins (
  workspace_id     text not null references workspaces (id) on delete cascade,
  plugin_name      text not null,
  version          text not null,
  digest           text not null default '',
  -- boot: found on the box; reconcile: delivered by the reconciler.
  installed_via    text not null check (installed_via in ('boot', 'reconcile')),
  first_seen_at    timestamptz not null default now(),
  last_verified_at timestamptz not null default now(),
  delivered_at     timestamptz,
  last_workflow_id text not null,
  last_run_id      text not null,
  primary key (workspace_id, plugin_name)
);

-- One row per plugin delivered since the last verified restart. identity_after
-- is the runtime identity read after the plugin was swapped in; null means the
-- swap was not verified (a crash mid-delivery), which always calls for a restart.
create table restart_marks (
  workspace_id   text not null references workspaces (id) on delete cascade,
  plugin_name    text not null,
  marked_at      timestamptz not null default now(),
  identity_after text,
  primary key (workspace_id, plugin_name)
);

-- The restart ledger: one row per reconcile run that restarted (or tried to
-- restart) a box. identity_before makes a retried restart idempotent.
create table box_restarts (
  workspace_id    text not null references workspaces (id) on delete cascade,
  workflow_id     text not null,
  run_id          text not null,
  reason          text not null,
  mode            text not null check (mode in ('runtime', 'reboot')),
  requested_at    timestamptz not null default now(),
  completed_at    timestamptz,
  identity_before text not null,
  identity_after  text,
  primary key (workspace_id, workflow_id, run_id)
);

create index box_restarts_requested_at on box_restarts (requested_at);

---- create above / drop below ----

drop table box_restarts;
drop table restart_marks;
drop table workspace_plugins;
drop table workspaces;
