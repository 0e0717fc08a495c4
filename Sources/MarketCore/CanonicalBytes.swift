/// Unambiguous bytes for hashing and signing: a domain tag, then every field as an 8-byte
/// big-endian length followed by its UTF-8 bytes. No two different field lists share bytes,
/// and the domain tag keeps a signature or hash made for one purpose from passing for another.
public enum CanonicalBytes {
    public static func lengthPrefixed(domain: String, fields: [String]) -> [UInt8] {
        var bytes = Array(domain.utf8)
        for field in fields {
            let utf8 = Array(field.utf8)
            withUnsafeBytes(of: UInt64(utf8.count).bigEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: utf8)
        }
        return bytes
    }
}
