//! `regtest`: a persistent Bitcoin Core regtest node for trying t2t by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bitcoin::{Amount, Denomination};
use clap::{Parser, Subcommand};
use regtest::daemon::Daemon;
use regtest::{bitcoind_exe, parse_regtest_address};

/// Run a real Bitcoin Core node on regtest under a data dir: start it, mine, fund addresses,
/// stop it. The first start builds bitcoind from source if none is found (about 10 minutes).
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Folder of the node's chain, cookie and faucet key.
    #[arg(long, env = "T2T_REGTEST_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the node in the background and print its RPC endpoint and cookie path.
    Up,
    /// Show height, mempool size, RPC endpoint and cookie path of the running node.
    Status,
    /// Mine N blocks, to the faucet unless --to names an address.
    Mine {
        /// Number of blocks.
        blocks: u32,
        /// Regtest address that receives the block rewards.
        #[arg(long)]
        to: Option<String>,
    },
    /// Pay AMOUNT to ADDRESS in a confirmed transaction, from matured block rewards.
    Fund {
        /// Regtest address (bcrt1…).
        address: String,
        /// Amount with its unit: 0.5btc, 100000sat, "2 mBTC".
        amount: String,
    },
    /// Stop the node; its chain and faucet stay in the data dir for the next `up`.
    Down,
    /// Print the path of the bitcoind that nodes run, building it first if there is none.
    Exe,
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("t2t").join("regtest")
}

/// Parse an amount with its unit, with or without a space: `0.5btc`, `100000 sat`.
fn parse_amount(text: &str) -> anyhow::Result<Amount> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("amount `{text}` needs a unit, e.g. 0.5btc or 100000sat"))?;
    let (number, unit) = text.split_at(split);
    let denomination: Denomination = unit
        .trim()
        .parse()
        .with_context(|| format!("unknown unit `{unit}` (use btc, mbtc, ubtc, bits or sat)"))?;
    Amount::from_str_in(number.trim(), denomination)
        .with_context(|| format!("`{number}` is not an amount of {unit}"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = &cli.data_dir;
    match cli.command {
        Command::Up => {
            let node = Daemon::up(data_dir)?;
            let status = node.status()?;
            println!("regtest node up under {}", data_dir.display());
            println!("rpc:     {}", status.rpc_url);
            println!("cookie:  {}", status.cookie_file.display());
            println!("height:  {}", status.height);
            println!("faucet:  {}", status.faucet_address);
        }
        Command::Status => {
            let status = Daemon::connect(data_dir)?.status()?;
            println!("rpc:     {}", status.rpc_url);
            println!("cookie:  {}", status.cookie_file.display());
            println!("height:  {}", status.height);
            println!("mempool: {} transactions", status.mempool_txs);
            println!("faucet:  {}", status.faucet_address);
        }
        Command::Mine { blocks, to } => {
            let to = to.as_deref().map(parse_regtest_address).transpose()?;
            let node = Daemon::connect(data_dir)?;
            let hashes = node.mine(blocks, to.as_ref())?;
            println!(
                "mined {} blocks; height {}",
                hashes.len(),
                node.status()?.height
            );
            if let Some(last) = hashes.last() {
                println!("tip:     {last}");
            }
        }
        Command::Fund { address, amount } => {
            let to = parse_regtest_address(&address)?;
            let amount = parse_amount(&amount)?;
            let node = Daemon::connect(data_dir)?;
            let outpoint = node.fund(&to, amount)?;
            println!(
                "paid {} to {to} in {outpoint} (confirmed)",
                amount.display_dynamic()
            );
        }
        Command::Down => {
            Daemon::connect(data_dir)?.down()?;
            println!("regtest node under {} stopped", data_dir.display());
        }
        Command::Exe => println!("{}", bitcoind_exe()?.display()),
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_need_units() {
        assert_eq!(
            parse_amount("0.5btc").unwrap(),
            Amount::from_sat(50_000_000)
        );
        assert_eq!(
            parse_amount("100000 sat").unwrap(),
            Amount::from_sat(100_000)
        );
        assert_eq!(parse_amount("2 mBTC").unwrap(), Amount::from_sat(200_000));
        assert!(parse_amount("5").is_err());
        assert!(parse_amount("5 dollars").is_err());
        assert!(parse_amount("x btc").is_err());
    }
}
