/// Myers' O(ND) difference of two sequences, with the common head and tail taken off first.
/// Past `maxEdits` differences it gives up on finding the shortest script and returns
/// "delete everything, insert everything", which is still a correct script.
enum LineDiff {
    enum Operation: Equatable {
        case equal(old: Int, new: Int)
        case delete(old: Int)
        case insert(new: Int)
    }

    static func diff<T: Hashable>(_ old: [T], _ new: [T], maxEdits: Int = 4000) -> [Operation] {
        var head = 0
        while head < old.count && head < new.count && old[head] == new[head] { head += 1 }
        var tail = 0
        while tail < old.count - head && tail < new.count - head
            && old[old.count - 1 - tail] == new[new.count - 1 - tail]
        {
            tail += 1
        }
        var operations = (0..<head).map { Operation.equal(old: $0, new: $0) }
        let a = Array(old[head..<(old.count - tail)])
        let b = Array(new[head..<(new.count - tail)])
        let middle =
            myers(a, b, maxEdits: maxEdits)
            ?? (a.indices.map { .delete(old: $0) } + b.indices.map { .insert(new: $0) })
        for operation in middle {
            switch operation {
            case .equal(let o, let n): operations.append(.equal(old: o + head, new: n + head))
            case .delete(let o): operations.append(.delete(old: o + head))
            case .insert(let n): operations.append(.insert(new: n + head))
            }
        }
        for index in 0..<tail {
            operations.append(.equal(old: old.count - tail + index, new: new.count - tail + index))
        }
        return operations
    }

    private static func myers<T: Hashable>(_ a: [T], _ b: [T], maxEdits: Int) -> [Operation]? {
        let n = a.count
        let m = b.count
        if n == 0 { return b.indices.map { .insert(new: $0) } }
        if m == 0 { return a.indices.map { .delete(old: $0) } }
        let limit = min(n + m, maxEdits)
        let offset = limit + 1
        var v = [Int](repeating: 0, count: 2 * limit + 3)
        var trace: [[Int]] = []
        for d in 0...limit {
            trace.append(v)
            for k in stride(from: -d, through: d, by: 2) {
                var x: Int
                if k == -d || (k != d && v[offset + k - 1] < v[offset + k + 1]) {
                    x = v[offset + k + 1]
                } else {
                    x = v[offset + k - 1] + 1
                }
                var y = x - k
                while x < n && y < m && a[x] == b[y] {
                    x += 1
                    y += 1
                }
                v[offset + k] = x
                if x >= n && y >= m {
                    return backtrack(trace: trace, finalV: v, d: d, n: n, m: m, offset: offset)
                }
            }
        }
        return nil
    }

    private static func backtrack(trace: [[Int]], finalV: [Int], d: Int, n: Int, m: Int, offset: Int) -> [Operation] {
        var operations: [Operation] = []
        var x = n
        var y = m
        for depth in stride(from: d, through: 0, by: -1) {
            let v = trace[depth]
            let k = x - y
            let previousK: Int
            if depth == 0 {
                previousK = 0
            } else if k == -depth || (k != depth && v[offset + k - 1] < v[offset + k + 1]) {
                previousK = k + 1
            } else {
                previousK = k - 1
            }
            let previousX = depth == 0 ? 0 : v[offset + previousK]
            let previousY = previousX - previousK
            while x > previousX && y > previousY {
                x -= 1
                y -= 1
                operations.append(.equal(old: x, new: y))
            }
            if depth > 0 {
                if x == previousX {
                    y -= 1
                    operations.append(.insert(new: y))
                } else {
                    x -= 1
                    operations.append(.delete(old: x))
                }
            }
        }
        return operations.reversed()
    }
}
