//! The bank's replicated state: accounts with balances, the commands that change them, their
//! outcomes and refusals, and the snapshot format. Pure and deterministic: no IO, no clock.

use std::collections::BTreeMap;

use bytes::Bytes;
use raft_core::Index;
use serde::{Deserialize, Serialize};

/// The most accounts a ledger holds; opening more is refused.
pub const ACCOUNTS_MAX: usize = 100_000;
/// The longest account name, in bytes.
pub const ACCOUNT_NAME_BYTES_MAX: usize = 64;
/// The first byte of every snapshot: the format of the rest.
pub const SNAPSHOT_FORMAT: u8 = 1;

/// A change to the ledger, proposed through Raft and applied on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Opens an account with a balance of 0.
    Open {
        /// The new account's name.
        account: String,
    },
    /// Adds money to an account (money enters the bank).
    Deposit {
        /// The account credited.
        account: String,
        /// How much, in the smallest unit (cents).
        amount: u64,
    },
    /// Moves money between two accounts; the total in the bank does not change.
    Transfer {
        /// The account debited.
        from: String,
        /// The account credited.
        to: String,
        /// How much, in the smallest unit (cents).
        amount: u64,
    },
}

impl Command {
    /// The bytes to propose.
    pub fn encode(&self) -> Bytes {
        // Serializing these plain types into a Vec cannot fail; were it to, the empty command
        // would be refused as `Malformed` on every node alike.
        Bytes::from(postcard::to_stdvec(self).unwrap_or_default())
    }

    /// Decodes proposed bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The account was opened.
    Opened,
    /// The deposit was made; the account's new balance.
    Deposited {
        /// The balance after the deposit.
        balance: u64,
    },
    /// The transfer was made; both new balances.
    Transferred {
        /// The debited account's balance after the transfer.
        from_balance: u64,
        /// The credited account's balance after the transfer.
        to_balance: u64,
    },
}

/// Why a command was refused. Refusals are deterministic (every node refuses the same
/// command the same way) and change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command's bytes do not decode.
    #[error("malformed command")]
    Malformed,
    /// An account name is empty, too long or contains control characters.
    #[error("invalid account name")]
    InvalidName,
    /// The account to open exists already.
    #[error("account {0:?} exists already")]
    AccountExists(String),
    /// The ledger holds [`ACCOUNTS_MAX`] accounts.
    #[error("too many accounts")]
    TooManyAccounts,
    /// The account does not exist.
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    /// An amount of 0 was given.
    #[error("the amount must be positive")]
    ZeroAmount,
    /// A transfer from an account to itself.
    #[error("cannot transfer from an account to itself")]
    SameAccount,
    /// The debited account holds less than the amount.
    #[error("insufficient funds in {account:?}: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// The debited account.
        account: String,
        /// Its balance.
        balance: u64,
        /// The amount of the transfer.
        requested: u64,
    },
    /// The deposit would push the money in the bank past `u64::MAX`.
    #[error("the deposit would overflow the bank's total")]
    Overflow,
}

/// The response to one applied command, as returned in `Applied::response`.
pub type Response = Result<Outcome, Rejection>;

/// Encodes a command's response.
pub fn encode_response(response: &Response) -> Bytes {
    // Cannot fail for these types; an empty response would fail to decode at the caller.
    Bytes::from(postcard::to_stdvec(response).unwrap_or_default())
}

/// Decodes a command's response.
pub fn decode_response(bytes: &[u8]) -> Result<Response, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The ledger could not be encoded.
    #[error("cannot encode the snapshot: {0}")]
    Encode(String),
    /// The format byte is missing or unknown.
    #[error("unknown snapshot format {0:?}")]
    Format(Option<u8>),
    /// The body does not decode.
    #[error("undecodable snapshot: {0}")]
    Decode(String),
    /// The body decodes but breaks an invariant of the ledger.
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(&'static str),
}

/// The whole ledger: balances by account, the money they hold together, and the last log
/// index applied. The sum of the balances always equals [`total`](Ledger::total).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    accounts: BTreeMap<String, u64>,
    total: u64,
    applied_index: Index,
}

impl Ledger {
    /// Every account's balance, by name.
    pub fn balances(&self) -> &BTreeMap<String, u64> {
        &self.accounts
    }

    /// One account's balance.
    pub fn balance(&self, account: &str) -> Option<u64> {
        self.accounts.get(account).copied()
    }

    /// The money in the bank: the sum of all balances.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The last log index applied to this ledger.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// Records that every entry up to `index` was applied (commands or not).
    pub fn set_applied_index(&mut self, index: Index) {
        self.applied_index = index;
    }

    /// Applies proposed bytes: an undecodable command is refused with
    /// [`Rejection::Malformed`].
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Response {
        match Command::decode(bytes) {
            Ok(command) => self.apply(&command),
            Err(_) => Err(Rejection::Malformed),
        }
    }

    /// Applies one command; a refused command changes nothing.
    pub fn apply(&mut self, command: &Command) -> Response {
        let response = match command {
            Command::Open { account } => self.open(account),
            Command::Deposit { account, amount } => self.deposit(account, *amount),
            Command::Transfer { from, to, amount } => self.transfer(from, to, *amount),
        };
        debug_assert!(self.is_consistent(), "the balances must add up to the total");
        response
    }

    fn open(&mut self, account: &str) -> Response {
        check_name(account)?;
        if self.accounts.contains_key(account) {
            return Err(Rejection::AccountExists(account.to_owned()));
        }
        if self.accounts.len() >= ACCOUNTS_MAX {
            return Err(Rejection::TooManyAccounts);
        }
        self.accounts.insert(account.to_owned(), 0);
        Ok(Outcome::Opened)
    }

    fn deposit(&mut self, account: &str, amount: u64) -> Response {
        if amount == 0 {
            return Err(Rejection::ZeroAmount);
        }
        let balance = self.accounts.get_mut(account).ok_or_else(|| unknown(account))?;
        let total = self.total.checked_add(amount).ok_or(Rejection::Overflow)?;
        // A balance is at most the total, so it cannot overflow when the total does not.
        *balance += amount;
        self.total = total;
        Ok(Outcome::Deposited { balance: *balance })
    }

    fn transfer(&mut self, from: &str, to: &str, amount: u64) -> Response {
        if amount == 0 {
            return Err(Rejection::ZeroAmount);
        }
        if from == to {
            return Err(Rejection::SameAccount);
        }
        let from_balance = self.balance(from).ok_or_else(|| unknown(from))?;
        let to_balance = self.balance(to).ok_or_else(|| unknown(to))?;
        if from_balance < amount {
            return Err(Rejection::InsufficientFunds {
                account: from.to_owned(),
                balance: from_balance,
                requested: amount,
            });
        }
        let (from_balance, to_balance) = (from_balance - amount, to_balance + amount);
        self.accounts.insert(from.to_owned(), from_balance);
        self.accounts.insert(to.to_owned(), to_balance);
        Ok(Outcome::Transferred { from_balance, to_balance })
    }

    /// The snapshot of the whole ledger: [`SNAPSHOT_FORMAT`], then its postcard encoding.
    pub fn to_snapshot(&self) -> Result<Bytes, SnapshotError> {
        let mut bytes = vec![SNAPSHOT_FORMAT];
        bytes.extend(postcard::to_stdvec(self).map_err(|e| SnapshotError::Encode(e.to_string()))?);
        Ok(Bytes::from(bytes))
    }

    /// Decodes a snapshot made by [`to_snapshot`](Ledger::to_snapshot) and checks every
    /// invariant (names, account count, balances adding up to the total).
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let Some((&SNAPSHOT_FORMAT, body)) = bytes.split_first() else {
            return Err(SnapshotError::Format(bytes.first().copied()));
        };
        let ledger: Ledger = postcard::from_bytes(body).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if ledger.accounts.len() > ACCOUNTS_MAX {
            return Err(SnapshotError::Inconsistent("more accounts than ACCOUNTS_MAX"));
        }
        if ledger.accounts.keys().any(|name| check_name(name).is_err()) {
            return Err(SnapshotError::Inconsistent("an account name is invalid"));
        }
        if !ledger.is_consistent() {
            return Err(SnapshotError::Inconsistent("the balances do not add up to the total"));
        }
        Ok(ledger)
    }

    /// Whether the balances add up to the total.
    fn is_consistent(&self) -> bool {
        let sum = self.accounts.values().try_fold(0u64, |sum, b| sum.checked_add(*b));
        sum == Some(self.total)
    }
}

fn unknown(account: &str) -> Rejection {
    Rejection::UnknownAccount(account.to_owned())
}

fn check_name(name: &str) -> Result<(), Rejection> {
    let valid =
        !name.is_empty() && name.len() <= ACCOUNT_NAME_BYTES_MAX && !name.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(Rejection::InvalidName)
    }
}
