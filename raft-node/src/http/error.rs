//! Error answers: every failure becomes an [`ApiError`] JSON body with a stable code and the
//! matching HTTP status, never a stack trace.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft_client::api::{ApiError, ErrorCode, LeaderView};
use raft_core::{ProposalRejection, RaftError, TransferError};

/// An error answer, optionally a redirect to the leader.
#[derive(Debug)]
pub(crate) struct HttpError {
    pub(crate) body: Box<ApiError>,
    /// `Location` of a 307 redirect to the leader (writes on a follower with forwarding off).
    pub(crate) redirect: Option<String>,
}

impl HttpError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { body: Box::new(ApiError::new(code, message)), redirect: None }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub(crate) fn timeout(what: &str) -> Self {
        Self::new(
            ErrorCode::Timeout,
            format!("{what} did not complete in time; a write's outcome is unknown"),
        )
    }

    /// Not the leader: the leader's address when known (or `no_leader`).
    pub(crate) fn not_leader(leader: Option<LeaderView>) -> Self {
        match leader {
            Some(view) if view.leader.is_some() => {
                let mut e = Self::new(ErrorCode::NotLeader, "this node is not the leader");
                e.body.leader = Some(view);
                e
            }
            _ => Self::new(ErrorCode::NoLeader, "no leader is known; retry shortly"),
        }
    }

    /// Maps a driver error. `leader` is filled in for `not_leader` answers.
    pub(crate) fn from_raft(e: RaftError, leader: impl FnOnce() -> Option<LeaderView>) -> Self {
        let message = e.to_string();
        match e {
            RaftError::Rejected(r) => match r {
                ProposalRejection::NotLeader { .. } => Self::not_leader(leader()),
                ProposalRejection::Busy => Self::new(ErrorCode::Busy, message),
                ProposalRejection::ForwardTimeout => Self::new(ErrorCode::Timeout, message),
                ProposalRejection::ForwardRefused { .. } => Self::new(ErrorCode::UnknownOutcome, message),
                ProposalRejection::Timeout => Self::new(ErrorCode::NoQuorum, message),
                ProposalRejection::LeadershipTransferInProgress => Self::new(ErrorCode::NoLeader, message),
                ProposalRejection::MembershipChangeInProgress => Self::new(ErrorCode::Conflict, message),
                ProposalRejection::NotCaughtUp { .. } => Self::new(ErrorCode::NotCaughtUp, message),
                ProposalRejection::NoLiveQuorum { .. } => Self::new(ErrorCode::UnsafeChange, message),
                ProposalRejection::InvalidMembershipChange(c) => match c {
                    raft_core::InvalidChange::NotAMember(_) => Self::not_found(message),
                    raft_core::InvalidChange::AlreadyMember(_) => Self::new(ErrorCode::Conflict, message),
                    _ => Self::bad_request(message),
                },
            },
            RaftError::Transfer(t) => match t {
                TransferError::NotLeader { .. } => Self::not_leader(leader()),
                TransferError::NotAVoter(_) => Self::bad_request(message),
                TransferError::NoCandidate | TransferError::InProgress(_) => {
                    Self::new(ErrorCode::Conflict, message)
                }
                TransferError::TimedOut(_) => Self::new(ErrorCode::Timeout, message),
            },
            RaftError::ProposalDropped => Self::new(ErrorCode::Unavailable, message),
            RaftError::OutcomeUnknown => Self::new(ErrorCode::UnknownOutcome, message),
            RaftError::Storage(raft_core::StorageError::Full) => Self::new(ErrorCode::NoSpace, message),
            RaftError::AlreadyShutdown | RaftError::Storage(_) | RaftError::Fsm(_) => {
                Self::new(ErrorCode::Unavailable, message)
            }
            RaftError::Config(_) | RaftError::Restore(_) => Self::new(ErrorCode::Internal, message),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if let Some(location) = self.redirect {
            let mut response = (StatusCode::TEMPORARY_REDIRECT, Json(*self.body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return response;
        }
        let status =
            StatusCode::from_u16(self.body.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(*self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use raft_core::{InvalidChange, ProposalRejection as P, RaftError as R, TransferError as T};

    use super::*;

    fn code_of(e: R) -> (ErrorCode, u16) {
        let leader =
            || Some(LeaderView { leader: Some(2), client_addr: Some("127.0.0.1:8082".into()), term: 3 });
        let mapped = HttpError::from_raft(e, leader);
        (mapped.body.code, mapped.body.code.http_status())
    }

    #[test]
    fn every_driver_error_has_a_stable_code_and_status() {
        let cases = [
            (R::Rejected(P::NotLeader { leader_hint: Some(2) }), ErrorCode::NotLeader, 421),
            (R::Rejected(P::Busy), ErrorCode::Busy, 503),
            (R::Rejected(P::ForwardTimeout), ErrorCode::Timeout, 504),
            (R::Rejected(P::Timeout), ErrorCode::NoQuorum, 503),
            (R::Rejected(P::LeadershipTransferInProgress), ErrorCode::NoLeader, 503),
            (R::Rejected(P::MembershipChangeInProgress), ErrorCode::Conflict, 409),
            (R::Rejected(P::InvalidMembershipChange(InvalidChange::NotAMember(9))), ErrorCode::NotFound, 404),
            (
                R::Rejected(P::InvalidMembershipChange(InvalidChange::AlreadyMember(2))),
                ErrorCode::Conflict,
                409,
            ),
            (R::Rejected(P::InvalidMembershipChange(InvalidChange::NoVoters)), ErrorCode::BadRequest, 400),
            (R::Rejected(P::NotCaughtUp { node: 4 }), ErrorCode::NotCaughtUp, 409),
            (R::Rejected(P::NoLiveQuorum { live: 1, voters: 2 }), ErrorCode::UnsafeChange, 409),
            (R::Transfer(T::NotLeader { leader_hint: None }), ErrorCode::NotLeader, 421),
            (R::Transfer(T::NotAVoter(4)), ErrorCode::BadRequest, 400),
            (R::Transfer(T::InProgress(3)), ErrorCode::Conflict, 409),
            (R::Transfer(T::NoCandidate), ErrorCode::Conflict, 409),
            (R::Transfer(T::TimedOut(3)), ErrorCode::Timeout, 504),
            (R::ProposalDropped, ErrorCode::Unavailable, 503),
            (R::OutcomeUnknown, ErrorCode::UnknownOutcome, 503),
            (R::AlreadyShutdown, ErrorCode::Unavailable, 503),
        ];
        for (error, code, status) in cases {
            let shown = format!("{error:?}");
            assert_eq!(code_of(error), (code, status), "{shown}");
        }
    }

    #[test]
    fn not_leader_carries_the_leader_or_becomes_no_leader() {
        let e = HttpError::from_raft(R::Rejected(P::NotLeader { leader_hint: None }), || {
            Some(LeaderView { leader: Some(2), client_addr: Some("a:1".into()), term: 1 })
        });
        assert_eq!(e.body.leader.and_then(|l| l.leader), Some(2));
        let e = HttpError::from_raft(R::Rejected(P::NotLeader { leader_hint: None }), || {
            Some(LeaderView { leader: None, client_addr: None, term: 1 })
        });
        assert_eq!(e.body.code, ErrorCode::NoLeader);
    }

    #[test]
    fn a_redirect_answers_307_with_location() {
        let mut e = HttpError::not_leader(Some(LeaderView {
            leader: Some(2),
            client_addr: Some("a:1".into()),
            term: 1,
        }));
        e.redirect = Some("http://a:1/v1/kv/k".into());
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            response.headers().get(header::LOCATION).map(|v| v.as_bytes()),
            Some(&b"http://a:1/v1/kv/k"[..])
        );
    }
}
