//! A fixed-capacity FIFO whose storage is allocated once, when the service starts.
//!
//! The queue's memory is decided by configuration, not by traffic: a full ring
//! hands the next item back (its request waits for room, or is refused) instead of
//! growing.

pub struct Ring<T> {
    slots: Box<[Option<T>]>,
    head: usize,
    len: usize,
}

impl<T> Ring<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        Ring {
            slots: (0..capacity).map(|_| None).collect(),
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    /// Appends at the back; hands the item back when there is no room.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.is_full() {
            return Err(item);
        }
        let at = (self.head + self.len) % self.slots.len();
        self.slots[at] = Some(item);
        self.len += 1;
        Ok(())
    }

    pub fn front(&self) -> Option<&T> {
        if self.len == 0 {
            return None;
        }
        self.slots[self.head].as_ref()
    }

    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let item = self.slots[self.head].take();
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_fifo_order_across_the_wrap() {
        let mut ring = Ring::with_capacity(3);
        for round in 0..10 {
            assert!(ring.push(round * 2).is_ok());
            assert!(ring.push(round * 2 + 1).is_ok());
            assert_eq!(ring.front(), Some(&(round * 2)));
            assert_eq!(ring.pop(), Some(round * 2));
            assert_eq!(ring.pop(), Some(round * 2 + 1));
            assert!(ring.is_empty());
        }
    }

    #[test]
    fn refuses_when_full_and_keeps_what_it_holds() {
        let mut ring = Ring::with_capacity(2);
        assert!(ring.push("a").is_ok());
        assert!(ring.push("b").is_ok());
        assert!(ring.is_full());
        assert_eq!(ring.push("c"), Err("c"));
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.pop(), Some("a"));
        assert!(ring.push("c").is_ok());
        assert_eq!(ring.pop(), Some("b"));
        assert_eq!(ring.pop(), Some("c"));
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn capacity_never_changes() {
        let mut ring = Ring::with_capacity(4);
        for i in 0..100 {
            let _ = ring.push(i);
            if i % 3 == 0 {
                ring.pop();
            }
            assert_eq!(ring.capacity(), 4);
            assert!(ring.len() <= 4);
        }
    }

    #[test]
    fn zero_capacity_is_always_full() {
        let mut ring: Ring<u8> = Ring::with_capacity(0);
        assert!(ring.is_full());
        assert_eq!(ring.push(1), Err(1));
        assert_eq!(ring.pop(), None);
    }
}
