//! `pgward serve`: load the config, set up logging, run until signalled.

use anyhow::Context;

use super::ConfigArg;
use crate::config::Config;
use crate::server::{self, Stop};

pub fn run(args: ConfigArg) -> anyhow::Result<()> {
    let config =
        Config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    super::service_logging(&config.log);
    super::runtime()?.block_on(server::serve(args.config, None, Stop::Signals))
}
