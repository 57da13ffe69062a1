//! Errors, by layer, and the one table that maps them onto the wire.
//!
//! [`EtcdError`] is what a client may see: every variant carries etcd's exact
//! message string and gRPC status code (clients such as etcdctl and Go
//! clientv3 match on the string). [`StorageError`] is fatal: the member stops
//! loudly instead of serving from a store it can no longer trust. The single
//! `From<EtcdError> for tonic::Status` impl below is the only place a code or
//! a string is chosen.

use tonic::Code;

/// A client-visible error, identical on the wire to etcd's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    // The Lock and Election services' own errors. etcd returns them as plain
    // Go errors, so gRPC carries them with code Unknown and no prefix.
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    #[error("lost watcher waiting for delete")]
    LostWatcher,
    /// An RPC cairn does not serve yet (see docs/COMPATIBILITY.md).
    #[error("cairn: {0} is not implemented yet")]
    Unimplemented(&'static str),
}

impl EtcdError {
    /// The gRPC status code etcd uses for this error.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | MemberBadUrls | RequestTooLarge => Code::InvalidArgument,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted => {
                Code::FailedPrecondition
            }
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist
            | MemberExist
            | PeerUrlExist
            | AuthNotEnabled
            | NotLeader
            | BadLeaderTransferee
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | NotEnoughStartedMembers => Code::FailedPrecondition,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            NoLeader
            | LeaderChanged
            | Stopped
            | Timeout
            | Unhealthy
            | TimeoutLeaderTransfer
            | NotSupportedForLearner => Code::Unavailable,
            Corrupt => Code::DataLoss,
            ElectionNotLeader | ElectionNoLeader | MissingLeaderKey | LostWatcher => Code::Unknown,
            Unimplemented(_) => Code::Unimplemented,
        }
    }
}

impl From<EtcdError> for tonic::Status {
    fn from(e: EtcdError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// What the Lock and Election services answer when a recipe fails. etcd's
/// services run on an in-process clientv3, which turns a server's status
/// into a plain Go error; gRPC then sends it with code Unknown and the same
/// message (e.g. `etcdserver: requested lease not found`). cairn does the
/// same, so clients see identical statuses.
impl From<crate::recipes::Error> for tonic::Status {
    fn from(e: crate::recipes::Error) -> Self {
        match e {
            crate::recipes::Error::Rpc(status) => {
                tonic::Status::new(Code::Unknown, status.message())
            }
            crate::recipes::Error::Etcd(e) => tonic::Status::new(Code::Unknown, e.to_string()),
        }
    }
}

/// A failure of the member's own storage (raft log or state store). Never
/// caused by client input; a member that hits one stops rather than serve
/// possibly wrong data.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("state store (sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("state store (fjall): {0}")]
    Fjall(#[from] fjall::Error),
    #[error("raft log (raft-engine): {0}")]
    RaftEngine(#[from] raft_engine::Error),
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A background commit of buffered writes failed earlier.
    #[error("state store: an earlier commit of buffered writes failed: {0}")]
    CommitFailed(String),
}

/// Reads can fail like writes: a client error is answered, a storage fault
/// is fatal.
impl From<crate::mvcc::ReadError> for tonic::Status {
    fn from(e: crate::mvcc::ReadError) -> Self {
        match e {
            crate::mvcc::ReadError::Client(e) => e.into(),
            crate::mvcc::ReadError::Storage(e) => fatal("reading the state store", &e),
        }
    }
}

/// A storage failure: the member can no longer promise what it stores, so
/// it stops, loudly, instead of serving. (The raft log keeps every
/// acknowledged write; a restart re-applies from it.)
pub fn fatal(what: &str, e: &dyn std::fmt::Display) -> ! {
    tracing::error!(cause = %e, "fatal: storage error while {what}; stopping the member");
    std::process::exit(crate::supervise::FATAL_EXIT_CODE)
}

impl StorageError {
    pub fn corrupt(what: &'static str, detail: impl ToString) -> Self {
        StorageError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_etcds_code_and_string() {
        struct Case {
            err: EtcdError,
            code: Code,
            msg: &'static str,
        }
        let cases = [
            Case {
                err: EtcdError::AuthFailed,
                code: Code::InvalidArgument,
                msg: "etcdserver: authentication failed, invalid user ID or password",
            },
            Case {
                err: EtcdError::UserNotFound,
                code: Code::FailedPrecondition,
                msg: "etcdserver: user name not found",
            },
            Case {
                err: EtcdError::RoleNotGranted,
                code: Code::FailedPrecondition,
                msg: "etcdserver: role is not granted to the user",
            },
            Case {
                err: EtcdError::AuthOldRevision,
                code: Code::InvalidArgument,
                msg: "etcdserver: revision of auth store is old",
            },
            Case {
                err: EtcdError::InvalidAuthToken,
                code: Code::Unauthenticated,
                msg: "etcdserver: invalid auth token",
            },
            Case {
                err: EtcdError::EmptyKey,
                code: Code::InvalidArgument,
                msg: "etcdserver: key is not provided",
            },
            Case {
                err: EtcdError::Compacted,
                code: Code::OutOfRange,
                msg: "etcdserver: mvcc: required revision has been compacted",
            },
            Case {
                err: EtcdError::FutureRev,
                code: Code::OutOfRange,
                msg: "etcdserver: mvcc: required revision is a future revision",
            },
            Case {
                err: EtcdError::NoSpace,
                code: Code::ResourceExhausted,
                msg: "etcdserver: mvcc: database space exceeded",
            },
            Case {
                err: EtcdError::LeaseNotFound,
                code: Code::NotFound,
                msg: "etcdserver: requested lease not found",
            },
            Case {
                err: EtcdError::NoLeader,
                code: Code::Unavailable,
                msg: "etcdserver: no leader",
            },
            Case {
                err: EtcdError::PermissionDenied,
                code: Code::PermissionDenied,
                msg: "etcdserver: permission denied",
            },
            Case {
                err: EtcdError::ElectionNoLeader,
                code: Code::Unknown,
                msg: "election: no leader",
            },
            Case {
                err: EtcdError::MissingLeaderKey,
                code: Code::Unknown,
                msg: "\"leader\" field must be provided",
            },
        ];
        for c in cases {
            let s = tonic::Status::from(c.err);
            assert_eq!(s.code(), c.code);
            assert_eq!(s.message(), c.msg);
        }
    }
}
