//! The validated routes, and the index the proxy looks a request's route up in.
//!
//! A linear scan over the routes (longest prefix first) costs a comparison per route per
//! request: at 10,000 routes it took more than half the gateway's throughput. The index is
//! a trie of the prefixes' `/`-separated segments, ASCII-lower-cased (prefixes match
//! without regard to ASCII case), built once per configuration. A lookup walks the request
//! path's segments down the trie and takes the deepest node whose routes pass the host and
//! method filters, so its cost grows with the path's depth, not with the number of routes,
//! and it allocates nothing.
//!
//! The answer is exactly the scan's (`proxy::route`'s linear oracle, compared by a
//! differential test and a fuzz target):
//! - a prefix covers a path on a segment boundary (`/api` covers `/api` and `/api/x`, not
//!   `/apix`): the prefix's segments are the first segments of the path;
//! - a deeper node is a longer prefix; routes of one node are case variants of one prefix
//!   (the same length) and keep the scan's order: host routes, then host-less ones, each
//!   with method filters first, then in file order;
//! - a route whose host or method does not match is passed over, and a shorter prefix may
//!   answer; `/` covers every path (even one without a leading `/`) and is tried last.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use http::Method;

/// What the index knows of a route: its normalised prefix, its host filter (normal form)
/// and its method filter. The index holds routes of any type `R` (the config's `Route`),
/// so it needs nothing else from the config model.
pub struct RouteKey<'a> {
    pub prefix: &'a str,
    pub host: Option<&'a str>,
    pub methods: Option<&'a [Method]>,
}

/// The routes, sorted longest prefix first (derefs to that slice), with their index.
#[derive(Clone)]
pub struct RouteTable<R> {
    list: Vec<Arc<R>>,
    /// `nodes[0]` is the root: the `/` prefix.
    nodes: Vec<Node<R>>,
}

#[derive(Clone)]
struct Node<R> {
    /// Unused for the root.
    parent: usize,
    /// By ASCII-lower-cased segment, sorted (bytewise): a binary search per path segment.
    children: Vec<(Box<[u8]>, usize)>,
    /// Routes with a host filter, by host (sorted), each list in the scan's order.
    hosted: Vec<(Box<str>, Vec<Entry<R>>)>,
    /// Routes without a host filter, in the scan's order.
    any: Vec<Entry<R>>,
}

/// A route and its method filter (`None`: every method).
#[derive(Clone)]
struct Entry<R> {
    methods: Option<Box<[Method]>>,
    route: Arc<R>,
}

impl<R> Default for RouteTable<R> {
    fn default() -> Self {
        RouteTable { list: Vec::new(), nodes: Vec::new() }
    }
}

impl<R> Default for Node<R> {
    fn default() -> Self {
        Node { parent: 0, children: Vec::new(), hosted: Vec::new(), any: Vec::new() }
    }
}

impl<R> RouteTable<R> {
    /// `list` sorted as the validator sorts it: longest prefix first, then host routes,
    /// then method-filtered routes, then file order; `key` tells a route's prefix, host
    /// and methods.
    pub(crate) fn new(list: Vec<Arc<R>>, key: impl Fn(&R) -> RouteKey<'_>) -> RouteTable<R> {
        let mut nodes = vec![Node::default()];
        for route in &list {
            let k = key(route);
            let mut at = 0;
            if k.prefix != "/" {
                // Normalised prefixes start with `/`; anything else never reaches here.
                let rest = k.prefix.as_bytes().get(1..).unwrap_or_default();
                for seg in rest.split(|&b| b == b'/') {
                    at = match child(&nodes[at].children, seg) {
                        Ok(i) => nodes[at].children[i].1,
                        Err(i) => {
                            let id = nodes.len();
                            nodes.push(Node { parent: at, ..Node::default() });
                            nodes[at].children.insert(i, (seg.to_ascii_lowercase().into_boxed_slice(), id));
                            id
                        }
                    };
                }
            }
            let node = &mut nodes[at];
            let entry = Entry { methods: k.methods.map(Box::from), route: route.clone() };
            match k.host {
                None => node.any.push(entry),
                Some(h) => match node.hosted.binary_search_by(|(name, _)| (**name).cmp(h)) {
                    Ok(i) => node.hosted[i].1.push(entry),
                    Err(i) => node.hosted.insert(i, (h.into(), vec![entry])),
                },
            }
        }
        RouteTable { list, nodes }
    }

    /// The route for a request: the longest prefix covering `path` whose host and method
    /// filters let it through. `host` in [`crate::authority::Authority`]'s normal form, as
    /// every route's host is, so the two compare exactly.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Option<&Arc<R>> {
        let mut at = 0;
        if let Some(rest) = path.as_bytes().strip_prefix(b"/") {
            for seg in rest.split(|&b| b == b'/') {
                match self.nodes.get(at).map(|n| child(&n.children, seg)) {
                    Some(Ok(i)) => at = self.nodes[at].children[i].1,
                    _ => break,
                }
            }
        }
        loop {
            let node = self.nodes.get(at)?;
            if let Some(r) = node.pick(host, method) {
                return Some(r);
            }
            if at == 0 {
                return None;
            }
            at = node.parent;
        }
    }
}

impl<R> Node<R> {
    fn pick(&self, host: Option<&str>, method: &Method) -> Option<&Arc<R>> {
        let allows = |e: &&Entry<R>| e.methods.as_ref().is_none_or(|ms| ms.contains(method));
        let hosted = host
            .and_then(|h| self.hosted.binary_search_by(|(k, _)| (**k).cmp(h)).ok())
            .and_then(|i| self.hosted[i].1.iter().find(allows));
        hosted.or_else(|| self.any.iter().find(allows)).map(|e| &e.route)
    }
}

/// The child for `seg` (compared ASCII-case-insensitively; keys are lower case).
fn child(children: &[(Box<[u8]>, usize)], seg: &[u8]) -> Result<usize, usize> {
    children.binary_search_by(|(k, _)| cmp_lower(k, seg))
}

fn cmp_lower(lower: &[u8], seg: &[u8]) -> Ordering {
    lower.iter().copied().cmp(seg.iter().map(u8::to_ascii_lowercase))
}

impl<R> Deref for RouteTable<R> {
    type Target = [Arc<R>];

    fn deref(&self) -> &[Arc<R>] {
        &self.list
    }
}

impl<'a, R> IntoIterator for &'a RouteTable<R> {
    type Item = &'a Arc<R>;
    type IntoIter = std::slice::Iter<'a, Arc<R>>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

impl<R: fmt::Debug> fmt::Debug for RouteTable<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.list).finish()
    }
}
