//! The search for a linearization of one key's operations: Wing and Gong's algorithm with
//! Lowe's just-in-time linearization and memoization of (set of linearized operations, model
//! state), the approach of Porcupine.
//!
//! The calls and returns of all operations form one list sorted by time (a call before a
//! return at the same instant, so touching intervals count as concurrent). Walking the list
//! from its head, every call met before the first return belongs to an operation that may be
//! linearized next: the search tries it against the register, and if the step is legal and the
//! resulting (set, state) pair is new, it linearizes the operation, lifts its call and return
//! out of the list, and starts again from the head. Reaching a return means that operation was
//! not linearized before it returned: the search backtracks, undoing the last linearization and
//! trying the next candidate after it. Optional operations (unknown writes) have no return, so
//! they never force a backtrack; the search succeeds as soon as every completed operation is
//! linearized.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::model::{SearchOp, Step, ValueId, ABSENT};

/// The limits of one search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The search gives up at this instant.
    pub(crate) deadline: Instant,
    /// The search gives up when it has memoized more states than this.
    pub(crate) max_states: usize,
}

/// The result of one search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SearchResult {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists.
    NotLinearizable,
    /// A limit was reached first; the reason says which.
    GaveUp(String),
}

/// Iterations between two looks at the clock.
const CLOCK_CHECK_INTERVAL: u64 = 1 << 10;

/// A fixed-size set of operation indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BitSet {
    words: Box<[u64]>,
}

impl BitSet {
    fn with_capacity(bits: usize) -> Self {
        Self { words: vec![0; bits.div_ceil(64)].into_boxed_slice() }
    }

    fn set(&mut self, bit: usize) {
        if let Some(word) = self.words.get_mut(bit / 64) {
            *word |= 1 << (bit % 64);
        }
    }

    fn contains(&self, bit: usize) -> bool {
        self.words.get(bit / 64).is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }

    fn clear(&mut self, bit: usize) {
        if let Some(word) = self.words.get_mut(bit / 64) {
            *word &= !(1 << (bit % 64));
        }
    }
}

/// A memoized search state: which operations are linearized, and the register's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheEntry {
    linearized: BitSet,
    state: ValueId,
}

/// A small multiply-rotate hasher: the cache hashes many short word arrays, for which the
/// default SipHash is several times slower (and no hash flooding is possible: the checker's
/// input is a test's own history).
#[derive(Default)]
struct WordHasher {
    hash: u64,
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

/// The time-sorted list of calls and returns, doubly linked over arrays so that an
/// operation's two events can be lifted out and put back (in reverse order) in O(1).
struct EventList {
    /// The operation each node belongs to; node 0 is the head, the last node the tail.
    op_of_node: Vec<usize>,
    /// Whether each node is a call (else a return).
    is_call: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Each operation's call node.
    call_node: Vec<usize>,
    /// Each operation's return node (`None` for an optional operation).
    return_node: Vec<Option<usize>>,
}

impl EventList {
    const HEAD: usize = 0;

    fn new(ops: &[SearchOp]) -> Self {
        // (time, 0 for a call / 1 for a return, operation): calls sort first at equal times.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            events.push((op.call_ns, 0, index));
            if let Some(return_ns) = op.return_ns {
                events.push((return_ns, 1, index));
            }
        }
        events.sort_unstable();
        let nodes = events.len() + 2;
        let mut list = Self {
            op_of_node: vec![usize::MAX; nodes],
            is_call: vec![false; nodes],
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|node| node.saturating_sub(1)).collect(),
            call_node: vec![0; ops.len()],
            return_node: vec![None; ops.len()],
        };
        for (position, &(_, kind, index)) in events.iter().enumerate() {
            let node = position + 1;
            list.op_of_node[node] = index;
            list.is_call[node] = kind == 0;
            if kind == 0 {
                list.call_node[index] = node;
            } else {
                list.return_node[index] = Some(node);
            }
        }
        list
    }

    fn tail(&self) -> usize {
        self.op_of_node.len() - 1
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(node) = self.return_node[op] {
            self.unlink(node);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(node) = self.return_node[op] {
            self.relink(node);
        }
        self.relink(self.call_node[op]);
    }
}

/// For each optional operation, the optional operation with the same step called just before
/// it (by call time, then index), if any.
///
/// Twins are interchangeable: where the later one can be linearized, so can the earlier one
/// (neither has a return to respect, and the earlier was called first), with the same effect.
/// So the search linearizes twins only in call order, which keeps it from trying every subset of
/// identical unknown writes (many unknown deletes, say) as a different state.
fn twins_before(ops: &[SearchOp]) -> Vec<Option<usize>> {
    let mut optional: Vec<usize> = (0..ops.len()).filter(|&index| ops[index].return_ns.is_none()).collect();
    optional.sort_by_key(|&index| (ops[index].call_ns, index));
    let mut last_of_step: HashMap<Step, usize> = HashMap::new();
    let mut twin_before = vec![None; ops.len()];
    for index in optional {
        twin_before[index] = last_of_step.insert(ops[index].step, index);
    }
    twin_before
}

/// One linearized operation on the search's stack.
struct Frame {
    /// The operation.
    index: usize,
    /// The register's value before it.
    state_before: ValueId,
    /// Linearized as a forced move (a read that could go first): its level has no other
    /// candidate worth trying.
    forced: bool,
}

/// Searches for a linearization of `ops` from an absent register.
///
/// Reads (and failed swaps) that can go next are forced moves: if a read is a candidate (no
/// unlinearized operation returned before its call) and the register holds what it needs,
/// any linearization from here can be changed into one that takes the read first. Moving it
/// earlier breaks no real-time order (everything that returned before its call is already
/// linearized) and, as it changes nothing, no later operation sees a different value. So the
/// search takes such a read without trying the other candidates, and if that fails, the
/// candidates of its level fail too. Only writes are branched on.
pub(crate) fn search(ops: &[SearchOp], limits: &Limits) -> SearchResult {
    let mut remaining_completed = ops.iter().filter(|op| op.return_ns.is_some()).count();
    let twin_before = twins_before(ops);
    let mut list = EventList::new(ops);
    let tail = list.tail();
    let mut cache: HashSet<CacheEntry, BuildHasherDefault<WordHasher>> = HashSet::default();
    let mut linearized = BitSet::with_capacity(ops.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = ABSENT;
    let mut node = list.next[EventList::HEAD];
    // At a new level: look for a forced read before branching.
    let mut fresh_level = true;
    let mut iterations: u64 = 0;
    loop {
        if remaining_completed == 0 {
            return SearchResult::Linearizable;
        }
        iterations += 1;
        if iterations.is_multiple_of(CLOCK_CHECK_INTERVAL) && Instant::now() >= limits.deadline {
            return SearchResult::GaveUp(format!(
                "time budget exhausted after {} memoized states ({} of {} operations linearized at the time)",
                cache.len(),
                stack.len(),
                ops.len()
            ));
        }
        if cache.len() > limits.max_states {
            return SearchResult::GaveUp(format!(
                "more than {} memoized states ({} operations on the key)",
                limits.max_states,
                ops.len()
            ));
        }
        let mut level_failed = false;
        if fresh_level {
            fresh_level = false;
            node = list.next[EventList::HEAD];
            let mut scan = node;
            let mut forced = None;
            while scan != tail && list.is_call[scan] {
                let index = list.op_of_node[scan];
                if ops[index].step.is_read_only() && ops[index].step.apply(state).is_some() {
                    forced = Some(index);
                    break;
                }
                scan = list.next[scan];
            }
            if let Some(index) = forced {
                linearized.set(index);
                if cache.insert(CacheEntry { linearized: linearized.clone(), state }) {
                    stack.push(Frame { index, state_before: state, forced: true });
                    list.lift(index);
                    remaining_completed -= 1;
                    fresh_level = true;
                    continue;
                }
                // Explored before, and failed: so does this level.
                linearized.clear(index);
                level_failed = true;
            }
        }
        if !level_failed && node != tail && list.is_call[node] {
            let index = list.op_of_node[node];
            node = list.next[node];
            // Reads that can go next were forced; the others cannot go next.
            if ops[index].step.is_read_only() {
                continue;
            }
            let twin_waiting = twin_before[index].is_some_and(|twin| !linearized.contains(twin));
            if let Some(next_state) = ops[index].step.apply(state).filter(|_| !twin_waiting) {
                linearized.set(index);
                if cache.insert(CacheEntry { linearized: linearized.clone(), state: next_state }) {
                    stack.push(Frame { index, state_before: state, forced: false });
                    state = next_state;
                    list.lift(index);
                    if ops[index].return_ns.is_some() {
                        remaining_completed -= 1;
                    }
                    fresh_level = true;
                    continue;
                }
                linearized.clear(index);
            }
        } else {
            // A return of an operation not yet linearized (or the end of the list, or a failed
            // forced read): undo linearizations up to the last one that was a choice, and try
            // the candidate after it.
            loop {
                let Some(frame) = stack.pop() else {
                    return SearchResult::NotLinearizable;
                };
                linearized.clear(frame.index);
                state = frame.state_before;
                list.unlift(frame.index);
                if ops[frame.index].return_ns.is_some() {
                    remaining_completed += 1;
                }
                if !frame.forced {
                    node = list.next[list.call_node[frame.index]];
                    break;
                }
            }
        }
    }
}

/// Limits for a search that must finish: no deadline worth the name, a generous state bound.
#[cfg(test)]
pub(crate) fn test_limits() -> Limits {
    Limits { deadline: Instant::now() + Duration::from_secs(3600), max_states: 10_000_000 }
}

/// The time left until `deadline`, zero if it has passed.
pub(crate) fn time_left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(step: Step, call_ns: u64, return_ns: Option<u64>) -> SearchOp {
        SearchOp { step, call_ns, return_ns, source: 0 }
    }

    fn run(ops: &[SearchOp]) -> SearchResult {
        search(ops, &test_limits())
    }

    #[test]
    fn empty_and_single_operations() {
        assert_eq!(run(&[]), SearchResult::Linearizable);
        assert_eq!(run(&[op(Step::Read(ABSENT), 0, Some(1))]), SearchResult::Linearizable);
        assert_eq!(run(&[op(Step::Read(1), 0, Some(1))]), SearchResult::NotLinearizable);
        assert_eq!(run(&[op(Step::Write(1), 0, None)]), SearchResult::Linearizable);
    }

    #[test]
    fn concurrent_operations_may_be_reordered() {
        // The read returns before the write, but they overlap, so the write may come first.
        let ops = [op(Step::Read(1), 5, Some(10)), op(Step::Write(1), 0, Some(20))];
        assert_eq!(run(&ops), SearchResult::Linearizable);
        // Touching intervals count as concurrent.
        let ops = [op(Step::Write(1), 10, Some(20)), op(Step::Read(1), 0, Some(10))];
        assert_eq!(run(&ops), SearchResult::Linearizable);
        // Disjoint intervals must keep their order.
        let ops = [op(Step::Write(1), 11, Some(20)), op(Step::Read(1), 0, Some(10))];
        assert_eq!(run(&ops), SearchResult::NotLinearizable);
    }

    #[test]
    fn optional_operations_may_happen_late_or_never() {
        // An unknown write of 1 called first; a read sees it much later.
        let ops = [
            op(Step::Write(1), 0, None),
            op(Step::Read(ABSENT), 1, Some(2)),
            op(Step::Read(1), 50, Some(60)),
        ];
        assert_eq!(run(&ops), SearchResult::Linearizable);
        // A read after an unknown write still sees the old value: the write never happened.
        let ops = [op(Step::Write(1), 0, None), op(Step::Read(ABSENT), 50, Some(60))];
        assert_eq!(run(&ops), SearchResult::Linearizable);
        // But it cannot take effect before its call.
        let ops = [op(Step::Read(1), 0, Some(5)), op(Step::Write(1), 6, None)];
        assert_eq!(run(&ops), SearchResult::NotLinearizable);
    }

    #[test]
    fn identical_optional_writes_do_not_multiply_the_states() {
        // 60 unknown deletes and puts of one value, then reads that need them in turn: without
        // the twin rule every subset of the deletes would be a different state.
        let mut ops: Vec<SearchOp> = (0..60).map(|i| op(Step::Write(ABSENT), i, None)).collect();
        ops.extend((0..60).map(|i| op(Step::Write(1), i, None)));
        for i in 0..20 {
            let value = if i % 2 == 0 { 1 } else { ABSENT };
            ops.push(op(Step::Read(value), 100 + 10 * i, Some(105 + 10 * i)));
        }
        let limits = Limits { deadline: Instant::now() + Duration::from_secs(3600), max_states: 10_000 };
        assert_eq!(search(&ops, &limits), SearchResult::Linearizable);
        // Not enough unknown writes of 1 to explain 30 alternations.
        let mut too_many = ops[60..61].to_vec();
        too_many.extend((0..20).map(|i| op(Step::Write(ABSENT), i, None)));
        for i in 0..6 {
            let value = if i % 2 == 0 { 1 } else { ABSENT };
            too_many.push(op(Step::Read(value), 100 + 10 * i, Some(105 + 10 * i)));
        }
        assert_eq!(search(&too_many, &limits), SearchResult::NotLinearizable);
    }

    #[test]
    fn the_state_bound_gives_up() {
        let ops: Vec<SearchOp> = (0..20).map(|i| op(Step::Write(i), 0, Some(100))).collect();
        let limits = Limits { deadline: Instant::now() + Duration::from_secs(3600), max_states: 10 };
        // All writes concurrent, then a read of a value nobody wrote: many states to explore.
        let mut with_read = ops.clone();
        with_read.push(op(Step::Read(99), 200, Some(300)));
        assert!(matches!(search(&with_read, &limits), SearchResult::GaveUp(_)));
    }

    #[test]
    fn a_past_deadline_gives_up() {
        let mut ops: Vec<SearchOp> = (0..20).map(|i| op(Step::Write(i), 0, Some(100))).collect();
        ops.push(op(Step::Read(99), 200, Some(300)));
        let limits = Limits { deadline: Instant::now(), max_states: usize::MAX };
        assert!(
            matches!(search(&ops, &limits), SearchResult::GaveUp(reason) if reason.contains("time budget"))
        );
    }
}
