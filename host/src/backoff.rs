//! Exponential backoff between retries of a failed broker call. Every place
//! the host retries (connecting, opening partitions and side topics,
//! fetching, producing, joining the group) uses this one schedule: a first
//! delay, doubled after each failure up to a cap, and back to the first after
//! a success.

use std::time::Duration;

/// A backoff schedule and where it stands.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles per failure, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The host's schedule for broker calls: 100 ms doubling to 5 s.
    pub fn broker() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay to wait after this failure; the following one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The delay [`Backoff::next_delay`] would give, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let got: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(got, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.peek(), ms(100));
    }
}
