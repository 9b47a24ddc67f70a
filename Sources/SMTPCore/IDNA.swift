/// Domain names for DNS: a U-label (`bücher`) becomes its A-label (`xn--bcher-kva`) by
/// Punycode (RFC 3492), as IDNA (RFC 5891 5) asks before any lookup. Labels are lowercased
/// first; the full IDNA2008 validity rules are not applied (a name that is not valid simply
/// does not resolve).
public enum IDNA {
    /// The ASCII form of `domain`, or nil when a label cannot be encoded (too long).
    public static func toASCII(_ domain: String) -> String? {
        if domain.utf8.allSatisfy({ $0 < 0x80 }) { return domain }
        var labels: [String] = []
        for label in domain.split(separator: ".", omittingEmptySubsequences: false) {
            let lower = label.lowercased()
            if lower.utf8.allSatisfy({ $0 < 0x80 }) {
                labels.append(lower)
                continue
            }
            guard let encoded = punycode(Array(lower.unicodeScalars.map(\.value))) else { return nil }
            let a = "xn--" + encoded
            guard a.utf8.count <= 63 else { return nil }
            labels.append(a)
        }
        return labels.joined(separator: ".")
    }

    /// RFC 3492 6.3 encoding.
    static func punycode(_ input: [UInt32]) -> String? {
        let base: UInt32 = 36, tMin: UInt32 = 1, tMax: UInt32 = 26, skew: UInt32 = 38, damp: UInt32 = 700
        func digit(_ d: UInt32) -> Character {
            Character(Unicode.Scalar(d < 26 ? d + 97 : d + 22)!)  // a-z, then 0-9
        }
        func adapt(_ delta: UInt32, _ numPoints: UInt32, _ first: Bool) -> UInt32 {
            var delta = first ? delta / damp : delta / 2
            delta += delta / numPoints
            var k: UInt32 = 0
            while delta > ((base - tMin) * tMax) / 2 {
                delta /= base - tMin
                k += base
            }
            return k + (((base - tMin + 1) * delta) / (delta + skew))
        }
        var output = ""
        for c in input where c < 0x80 { output.append(Character(Unicode.Scalar(c)!)) }
        let basicCount = UInt32(output.count)
        var handled = basicCount
        if basicCount > 0 { output.append("-") }
        var n: UInt32 = 0x80, delta: UInt32 = 0, bias: UInt32 = 72
        while handled < UInt32(input.count) {
            guard let m = input.filter({ $0 >= n }).min() else { break }
            let (product, overflow) = (m - n).multipliedReportingOverflow(by: handled + 1)
            guard !overflow, delta <= UInt32.max - product else { return nil }
            delta += product
            n = m
            for c in input {
                if c < n {
                    guard delta < UInt32.max else { return nil }
                    delta += 1
                }
                if c == n {
                    var q = delta
                    var k = base
                    while true {
                        let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                        if q < t { break }
                        output.append(digit(t + (q - t) % (base - t)))
                        q = (q - t) / (base - t)
                        k += base
                    }
                    output.append(digit(q))
                    bias = adapt(delta, handled + 1, handled == basicCount)
                    delta = 0
                    handled += 1
                }
            }
            delta += 1
            n += 1
        }
        return output
    }
}
