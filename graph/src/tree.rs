//! Named, nested values (a small pytree): leaves addressed by dotted paths such as
//! `params.model.layers.3.mlp.up_proj.weight`. A tree flattens to its leaves in one fixed
//! order, paths compared segment by segment with numeric segments compared as numbers
//! (`layers.2` before `layers.10`), so a program's positional parameters follow from the
//! tree alone, whatever order it was built in. Checkpoint names map onto paths directly.
use crate::Error;
use std::cmp::Ordering;
use std::fmt;

/// Leaves of type `T` at dotted paths, kept in the fixed flattening order of `path_order`;
/// no path equals another or is a segment prefix of another (a leaf is never also a node).
#[derive(Clone, PartialEq)]
pub struct Tree<T> {
    /// Sorted by `path_order`; no path is equal to, or a segment prefix of, another.
    leaves: Vec<(String, T)>,
}

impl<T> Default for Tree<T> {
    fn default() -> Self {
        Tree { leaves: Vec::new() }
    }
}

/// The fixed flattening order of paths.
pub fn path_order(a: &str, b: &str) -> Ordering {
    // Segments before the one holding the first differing byte are equal: start there (paths
    // share long prefixes, and trees compare them in every insert and lookup).
    let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let start = a.as_bytes()[..common].iter().rposition(|&c| c == b'.').map_or(0, |k| k + 1);
    let (a, b) = (&a[start..], &b[start..]);
    let mut sa = a.split('.');
    let mut sb = b.split('.');
    loop {
        match (sa.next(), sb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n).then_with(|| x.cmp(y)),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// `a` is `b` or a node above it (`params` is above `params.w`, not above `paramsx`).
fn is_prefix(a: &str, b: &str) -> bool {
    b.strip_prefix(a).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

fn check_path(path: &str) -> Result<(), Error> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(Error::Tree(format!("{path:?} is not a path (dot-separated, non-empty names)")));
    }
    Ok(())
}

impl<T> Tree<T> {
    /// An empty tree.
    pub fn new() -> Tree<T> {
        Tree { leaves: Vec::new() }
    }

    /// A tree of these leaves; duplicate paths, or a leaf that is also a node, are errors.
    pub fn from_leaves<S: Into<String>>(leaves: impl IntoIterator<Item = (S, T)>) -> Result<Tree<T>, Error> {
        let mut t = Tree::new();
        for (p, v) in leaves {
            t.insert(p, v)?;
        }
        Ok(t)
    }

    /// Adds a leaf at `path`.
    pub fn insert(&mut self, path: impl Into<String>, value: T) -> Result<(), Error> {
        let path = path.into();
        check_path(&path)?;
        let at = self.leaves.partition_point(|(p, _)| path_order(p, &path) == Ordering::Less);
        let clash = |p: &String| is_prefix(p, &path) || is_prefix(&path, p);
        // A clashing path sorts right before or right after where `path` would go.
        let near = at.checked_sub(1).into_iter().chain([at]).filter_map(|i| self.leaves.get(i));
        if let Some((p, _)) = near.into_iter().find(|(p, _)| clash(p)) {
            return Err(Error::Tree(format!("{path:?} clashes with the existing leaf {p:?}")));
        }
        self.leaves.insert(at, (path, value));
        Ok(())
    }

    /// `insert` as a builder.
    pub fn with(mut self, path: impl Into<String>, value: T) -> Result<Tree<T>, Error> {
        self.insert(path, value)?;
        Ok(self)
    }

    /// The number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The leaf at exactly `path`; None when there is none (a node above leaves is not a leaf).
    pub fn get(&self, path: &str) -> Option<&T> {
        let i = self.leaves.binary_search_by(|(p, _)| path_order(p, path)).ok()?;
        Some(&self.leaves[i].1)
    }

    /// The leaf at `path`, or an error naming the path and what the tree has.
    pub fn leaf(&self, path: &str) -> Result<&T, Error> {
        self.get(path).ok_or_else(|| {
            let near: Vec<&str> = self.paths().take(4).collect();
            Error::Tree(format!("no leaf {path:?} (the tree has {} leaves: {}...)", self.len(), near.join(", ")))
        })
    }

    /// Takes the leaf at `path` out of the tree.
    pub fn remove(&mut self, path: &str) -> Option<T> {
        let i = self.leaves.binary_search_by(|(p, _)| path_order(p, path)).ok()?;
        Some(self.leaves.remove(i).1)
    }

    /// Paths in flattening order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.leaves.iter().map(|(p, _)| p.as_str())
    }

    /// Leaves in flattening order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.leaves.iter().map(|(_, v)| v)
    }

    /// (path, leaf) pairs in flattening order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.leaves.iter().map(|(p, v)| (p.as_str(), v))
    }

    /// The (path, leaf) pairs in flattening order, consuming the tree.
    pub fn into_leaves(self) -> Vec<(String, T)> {
        self.leaves
    }

    /// Positions (in flattening order) of the leaves at or under `prefix`.
    pub fn indices_under(&self, prefix: &str) -> Vec<usize> {
        (0..self.leaves.len()).filter(|&i| is_prefix(prefix, &self.leaves[i].0)).collect()
    }

    /// The same paths with new values.
    pub fn map<U>(&self, mut f: impl FnMut(&str, &T) -> U) -> Tree<U> {
        Tree { leaves: self.leaves.iter().map(|(p, v)| (p.clone(), f(p, v))).collect() }
    }

    /// `map` with a fallible `f`: the same paths with new values, or the first error `f` returns.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(&str, &T) -> Result<U, E>) -> Result<Tree<U>, E> {
        let leaves = self.leaves.iter().map(|(p, v)| Ok((p.clone(), f(p, v)?))).collect::<Result<_, E>>()?;
        Ok(Tree { leaves })
    }

    /// Every path gets `prefix.` in front (the order is unchanged).
    pub fn prefixed(self, prefix: &str) -> Result<Tree<T>, Error> {
        check_path(prefix)?;
        Ok(Tree { leaves: self.leaves.into_iter().map(|(p, v)| (format!("{prefix}.{p}"), v)).collect() })
    }

    /// The leaves under `prefix`, with `prefix.` removed from their paths.
    pub fn take_subtree(&mut self, prefix: &str) -> Tree<T> {
        let (inside, outside): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.leaves).into_iter().partition(|(p, _)| is_prefix(prefix, p) && p != prefix);
        self.leaves = outside;
        Tree { leaves: inside.into_iter().map(|(p, v)| (p[prefix.len() + 1..].to_string(), v)).collect() }
    }

    /// Both trees' leaves; a path in both is an error.
    pub fn merge(mut self, other: Tree<T>) -> Result<Tree<T>, Error> {
        for (p, v) in other.leaves {
            self.insert(p, v)?;
        }
        Ok(self)
    }
}

impl<T: Clone> Tree<T> {
    /// A copy of the leaves under `prefix`, with `prefix.` removed from their paths.
    pub fn subtree(&self, prefix: &str) -> Tree<T> {
        let leaves = self
            .leaves
            .iter()
            .filter(|(p, _)| is_prefix(prefix, p) && p != prefix)
            .map(|(p, v)| (p[prefix.len() + 1..].to_string(), v.clone()))
            .collect();
        Tree { leaves }
    }
}

impl<T: fmt::Debug> fmt::Debug for Tree<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.leaves.iter().map(|(p, v)| (p, v))).finish()
    }
}

impl<T: fmt::Display> fmt::Display for Tree<T> {
    /// One `path: value` line per leaf, in flattening order (the program's parameter order).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, v)) in self.leaves.iter().enumerate() {
            writeln!(f, "{i:4} {p}: {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_order_is_fixed_and_numeric() {
        let t = Tree::from_leaves([("params.layers.10.w", 3), ("step", 9), ("params.layers.2.w", 1), ("opt.m.x", 5), ("params.embed", 0)])
            .unwrap();
        let paths: Vec<&str> = t.paths().collect();
        assert_eq!(paths, ["opt.m.x", "params.embed", "params.layers.2.w", "params.layers.10.w", "step"]);
        assert_eq!(t.get("params.layers.10.w"), Some(&3));
        assert_eq!(t.indices_under("params.layers"), vec![2, 3]);
        assert_eq!(t.indices_under("params.layer"), Vec::<usize>::new());
        let sub = t.subtree("params");
        assert_eq!(sub.paths().collect::<Vec<_>>(), ["embed", "layers.2.w", "layers.10.w"]);
        assert_eq!(sub.prefixed("new").unwrap().paths().next(), Some("new.embed"));
    }

    #[test]
    fn clashing_and_malformed_paths_are_errors() {
        let mut t = Tree::new();
        t.insert("a.b", 1).unwrap();
        assert!(t.insert("a.b", 2).is_err());
        assert!(t.insert("a", 2).is_err());
        assert!(t.insert("a.b.c", 2).is_err());
        assert!(t.insert("a..c", 2).is_err());
        assert!(t.insert("", 2).is_err());
        t.insert("a.bc", 2).unwrap();
        t.insert("a.a", 0).unwrap();
        assert_eq!(t.values().copied().collect::<Vec<_>>(), [0, 1, 2]);
        let err = t.leaf("zz").unwrap_err().to_string();
        assert!(err.contains("no leaf \"zz\""), "{err}");
    }
}
