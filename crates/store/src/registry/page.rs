//! One page of a listing.

/// Items of one page, and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// Whether items follow this page.
    pub more: bool,
}

impl<T> Page<T> {
    /// From up to `limit + 1` items read: keeps `limit` and records whether there were more.
    pub fn cut(mut items: Vec<T>, limit: usize) -> Page<T> {
        let more = items.len() > limit;
        items.truncate(limit);
        Page { items, more }
    }

    /// A page out of a whole listing held in memory.
    pub fn slice(items: Vec<T>, offset: usize, limit: usize) -> Page<T> {
        let more = items.len() > offset.saturating_add(limit);
        let items = items.into_iter().skip(offset).take(limit).collect();
        Page { items, more }
    }
}
