//! The command line: `serve`, `demo`, `drill`, `chart`, `migrate`, `reconcile`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, OrderStrategy, Secret};

#[derive(Debug, Parser)]
#[command(
    name = "seckill",
    version,
    about = "A flash-sale backend that never oversells and never loses an order"
)]
pub struct Cli {
    /// A TOML settings file (keys as in `SECKILL_*`, lower case, without the prefix).
    #[arg(long, global = true, env = "SECKILL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and the web pages.
    Serve(ServeArgs),
    /// `serve --demo`: seed demo items and a promo starting in a minute.
    Demo(ServeArgs),
    /// A flash crowd against a deployment over HTTP, with invariant checks.
    Drill(crate::drill::DrillArgs),
    /// Draw the benchmark chart (orders/s and p99 against clients) from drill reports.
    Chart(crate::drill::chart::ChartArgs),
    /// Apply the database migrations and exit.
    Migrate(DbArgs),
    /// Settle `stock_log` rows left `init` (one pass) and exit.
    Reconcile {
        #[command(flatten)]
        db: DbArgs,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct DbArgs {
    /// `sqlite://…` or `mysql://…` (overrides SECKILL_DATABASE_URL).
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    /// Listen address (overrides SECKILL_HTTP_ADDR).
    #[arg(long)]
    pub addr: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
    /// Admin bearer token (overrides SECKILL_ADMIN_TOKEN). A flag is seen by
    /// every local user in the process list: prefer the variable outside a
    /// single-user machine.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Turn the captcha off (drills).
    #[arg(long)]
    pub no_captcha: bool,
    /// `write-behind`, `db-lock` or `db-optimistic`.
    #[arg(long, value_parser = parse_strategy)]
    pub order_strategy: Option<OrderStrategy>,
    /// Seed demo items and a promo starting in a minute.
    #[arg(long)]
    pub demo: bool,
}

fn parse_strategy(s: &str) -> Result<OrderStrategy, String> {
    s.parse()
}

impl ServeArgs {
    /// Flags win over the file and the environment.
    fn apply(&self, c: &mut Config) {
        if let Some(a) = &self.addr {
            c.http_addr = a.clone();
        }
        self.db.apply(c);
        if let Some(t) = &self.admin_token {
            c.admin_token = Some(Secret(t.clone()));
        }
        if self.no_captcha {
            c.captcha_enabled = false;
        }
        if let Some(s) = self.order_strategy {
            c.order_strategy = s;
        }
        if self.demo {
            c.demo = true;
        }
        // As from the file or the environment: trimmed, empty is unset.
        c.unset_empty();
    }
}

impl DbArgs {
    fn apply(&self, c: &mut Config) {
        if let Some(u) = &self.database_url {
            c.database_url = u.clone();
        }
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let mut config = Config::load(cli.config.as_deref())?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(release) =
        crate::memory::release_when_idle(Duration::from_millis(config.memory_release_ms))
    {
        runtime.on_thread_park(release);
    }
    let runtime = runtime.build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                args.apply(&mut config);
                crate::server::serve(config).await
            }
            Command::Demo(args) => {
                args.apply(&mut config);
                config.demo = true;
                crate::server::serve(config).await
            }
            Command::Drill(args) => {
                let json = args.json;
                let report = crate::drill::run(args).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{}", report.render());
                }
                if !report.violations.is_empty() {
                    anyhow::bail!("{} invariant(s) violated", report.violations.len());
                }
                Ok(())
            }
            Command::Chart(args) => {
                let drawn = crate::drill::chart::run(&args)?;
                eprintln!("{} drills drawn to {}", drawn, args.output.display());
                Ok(())
            }
            Command::Migrate(db) => {
                db.apply(&mut config);
                // Only the database is used: an instance's other settings
                // (a MySQL deployment's Redis, say) are not asked for.
                config.database()?;
                crate::app::open_store(&config, &Default::default()).await?;
                tracing::info!(database = %crate::config::redact(&config.database_url), "migrations applied");
                Ok(())
            }
            Command::Reconcile { db, dry_run } => {
                db.apply(&mut config);
                // It makes no order ids: any free node id, never a
                // configured one a live instance holds (or would take back).
                config.node_id = None;
                // An embedded instance's ledger is in its own memory: a
                // pass from here would give its units back to a ledger of
                // this process's (the instance runs one of its own).
                let _data_lock = crate::process_lock::claim(&config).context(
                    "the running embedded instance reconciles its own sale (every \
                     SECKILL_RECONCILE_INTERVAL_SECS); stop it to run a pass from here",
                )?;
                let app = crate::app::build(config).await?;
                let reconciled = async {
                    let mut reconciler = crate::worker::reconciler::Reconciler::new();
                    let mut report = reconciler
                        .pass(&app.context, dry_run)
                        .await
                        .context("reconciliation failed")?;
                    if !dry_run && report.drifts_pending() > 0 {
                        // Drift is repaired only when it holds still: look again.
                        let quiet = app.context.config.ledger_rebuild_quiet_ms;
                        tracing::info!(
                            drifts = report.drifts_pending(),
                            quiet_ms = quiet,
                            "ledger drift seen; looking again after the quiet time before repairing"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(quiet + 100)).await;
                        report = reconciler
                            .pass(&app.context, false)
                            .await
                            .context("reconciliation failed")?;
                    }
                    println!("{report:?}");
                    // A sweep that could not do its work is a failed pass
                    // for whoever runs this from cron.
                    if report.unpaid_failed > 0 {
                        anyhow::bail!(
                            "{} unpaid order(s) past their time not cancelled (see the log); run again",
                            report.unpaid_failed
                        );
                    }
                    anyhow::Ok(())
                }
                .await;
                // Whatever the outcome: the node id is free at once, and the
                // consumers this process subscribed leave their groups.
                app.leave().await;
                reconciled
            }
        }
    })
}
