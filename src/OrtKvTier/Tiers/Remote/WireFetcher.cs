using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using StackExchange.Redis;

namespace OrtKvTier.Tiers.Remote;

/// <summary>
/// Fetches values at the wire's speed: pipelined <c>GET</c>s over a few plain sockets per server, read in parallel,
/// each value received straight into the memory the caller keeps it in (<see cref="ValueTarget"/>) and handed over as
/// soon as it is complete (so checking and placing value i overlaps with the arrival of the next ones). A single multiplexed connection reads one server's replies on one thread, far below what the server and
/// the network deliver (measured here: 0.5 GB/s against 1.8 GB/s for four plain sockets). Replies are bounded
/// (one value each, at most <see cref="RemoteTierOptions.MaxValueBytes"/>); the caller routes each key to its server
/// (a cluster's node for the key's slot). Not for TLS connections (the tier keeps its client's path for those).
/// </summary>
/// <remarks>
/// The server is untrusted input: every reply's type and length is parsed with bounds, and one deadline
/// (<see cref="RemoteTierOptions.FetchTimeout"/>) covers a whole fetch, so a server that trickles bytes or answers
/// nonsense costs at most that deadline (its keys are misses and its connection is dropped).
/// </remarks>
internal sealed class WireFetcher(ConfigurationOptions configuration, int socketsPerServer, TimeSpan timeout, TimeSpan fetchTimeout, long maxValueBytes) : IDisposable
{
    private static readonly ArrayPool<byte> Buffers = ArrayPool<byte>.Create(64 << 20, 32);
    private readonly ConcurrentDictionary<EndPoint, ConcurrentBag<WireConnection>> _idle = new();
    private volatile bool _disposed;

    /// <summary>Whether plain sockets can reach servers configured so (no TLS).</summary>
    public static bool Supports(ConfigurationOptions configuration) => !configuration.Ssl;

    /// <summary>
    /// What to do with value <c>index</c>: its bytes (valid only during the call), or null for none (absent, an error
    /// reply, a failed connection). <paramref name="payloadInPlace"/>: the value had the length its
    /// <see cref="ValueTarget"/> expected, <paramref name="value"/> is its first <see cref="ValueTarget.HeaderBytes"/>
    /// and the rest was received straight into <see cref="ValueTarget.Payload"/> (not yet checked).
    /// </summary>
    public delegate void ValueArrived(int index, ReadOnlyMemory<byte>? value, bool payloadInPlace);

    /// <summary>
    /// Fetches <paramref name="keys"/> from the servers <paramref name="serverOf"/> names (null: no server is up for that
    /// key, a miss), receiving a value of the expected length split as <paramref name="targetOf"/> says (null: whole).
    /// Calls <paramref name="arrived"/> once per key, from several threads, except for keys a cluster node
    /// redirected (MOVED or ASK: its slot moved), which are returned for the caller's client to follow. Also returns
    /// the connections that failed.
    /// </summary>
    public (int Failures, IReadOnlyList<int> Redirected) Fetch(IReadOnlyList<string> keys, Func<int, EndPoint?> serverOf, Func<int, ValueTarget?>? targetOf, ValueArrived arrived)
    {
        var redirected = new ConcurrentBag<int>();
        var groups = new List<(EndPoint Server, int[] Indices)>();
        foreach (var byServer in Enumerable.Range(0, keys.Count).GroupBy(serverOf))
        {
            if (byServer.Key is not { } server)
            {
                foreach (int i in byServer) arrived(i, null, false);
                continue;
            }
            var indices = byServer.ToArray();
            int sockets = Math.Min(socketsPerServer, indices.Length);
            // Interleaved, so the leading chunks of a chain arrive first on every socket.
            for (int s = 0; s < sockets; s++) groups.Add((server, indices.Where((_, n) => n % sockets == s).ToArray()));
        }
        int failures = 0;
        var job = new FetchJob(keys, targetOf, arrived, redirected, System.Diagnostics.Stopwatch.GetTimestamp() + (long)(fetchTimeout.TotalSeconds * System.Diagnostics.Stopwatch.Frequency));
        // A thread per socket (they block on the network): pool threads would wait to be injected on a busy machine.
        var readers = groups.Skip(1).Select(group => Task.Factory.StartNew(() =>
        {
            if (!FetchOn(group.Server, group.Indices, job)) Interlocked.Increment(ref failures);
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)).ToArray();
        if (groups.Count > 0 && !FetchOn(groups[0].Server, groups[0].Indices, job)) Interlocked.Increment(ref failures);
        Task.WaitAll(readers);
        return (failures, [.. redirected.Order()]);
    }

    /// <summary>What every socket of one fetch shares.</summary>
    private sealed record FetchJob(IReadOnlyList<string> Keys, Func<int, ValueTarget?>? TargetOf, ValueArrived Arrived, ConcurrentBag<int> Redirected, long Deadline);

    /// <summary>One socket's part: all its GETs sent at once, the replies read in order. False when the connection failed (the rest of its keys are misses).</summary>
    private bool FetchOn(EndPoint server, int[] indices, FetchJob job)
    {
        int done = 0;
        WireConnection? connection = null;
        try
        {
            connection = Rent(server);
            connection.Deadline = job.Deadline;
            connection.SendGets(indices.Select(i => job.Keys[i]));
            for (; done < indices.Length; done++)
            {
                int index = indices[done];
                if (!connection.ReadValue(maxValueBytes, Buffers, job.TargetOf?.Invoke(index), (value, inPlace) => job.Arrived(index, value, inPlace)))
                    job.Redirected.Add(index);
            }
            Return(server, connection);
            return true;
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidDataException or TimeoutException)
        {
            connection?.Dispose();
            for (; done < indices.Length; done++) job.Arrived(indices[done], null, false);
            return false;
        }
    }

    /// <summary>Opens the sockets a fetch from <paramref name="server"/> uses, ahead of the first one.</summary>
    public void Open(EndPoint server)
    {
        var opened = Enumerable.Range(0, socketsPerServer).Select(_ => Rent(server)).ToList();
        foreach (var connection in opened) Return(server, connection);
    }

    private WireConnection Rent(EndPoint server) =>
        _idle.GetOrAdd(server, _ => []).TryTake(out var connection) ? connection : WireConnection.Open(server, configuration, timeout);

    private void Return(EndPoint server, WireConnection connection)
    {
        if (_disposed) connection.Dispose();
        else _idle.GetOrAdd(server, _ => []).Add(connection);
    }

    public void Dispose()
    {
        _disposed = true;
        foreach (var bag in _idle.Values)
            while (bag.TryTake(out var connection)) connection.Dispose();
    }
}

/// <summary>Where a value of the expected length goes: its first <paramref name="HeaderBytes"/> to a buffer, the rest into <paramref name="Payload"/>.</summary>
internal readonly record struct ValueTarget(int HeaderBytes, Memory<byte> Payload)
{
    public bool Fits(long length) => length == HeaderBytes + (long)Payload.Length;
}

/// <summary>One plain RESP2 connection: commands written in one go, replies parsed from a buffered stream.</summary>
internal sealed class WireConnection : IDisposable
{
    private readonly Socket _socket;
    private readonly byte[] _buffer = new byte[256 << 10];
    private int _start, _end;

    private readonly int _operationMilliseconds;
    private int _receiveMilliseconds;

    private WireConnection(Socket socket, int operationMilliseconds)
    {
        _socket = socket;
        _operationMilliseconds = _receiveMilliseconds = operationMilliseconds;
    }

    /// <summary>When the fetch under way must be done (<see cref="System.Diagnostics.Stopwatch"/> ticks); 0: none.</summary>
    public long Deadline { get; set; }

    public static WireConnection Open(EndPoint server, ConfigurationOptions configuration, TimeSpan timeout)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveBufferSize = 4 << 20 };
        int milliseconds = (int)Math.Max(1, timeout.TotalMilliseconds);
        socket.ReceiveTimeout = socket.SendTimeout = milliseconds;
        var connection = new WireConnection(socket, milliseconds);
        try
        {
            var connecting = server switch
            {
                DnsEndPoint dns => socket.ConnectAsync(dns.Host, dns.Port),
                _ => socket.ConnectAsync(server),
            };
            if (!connecting.Wait(timeout)) throw new IOException($"connecting to {server} took longer than {milliseconds} ms");
            if (configuration.Password is { } password)
                connection.Expect(configuration.User is { } user ? ["AUTH", user, password] : ["AUTH", password], "AUTH");
            if (configuration.DefaultDatabase is int database and not 0) connection.Expect(["SELECT", database.ToString(System.Globalization.CultureInfo.InvariantCulture)], "SELECT");
            return connection;
        }
        catch (AggregateException e) when (e.InnerException is SocketException inner)
        {
            connection.Dispose();
            throw inner;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    public void SendGets(IEnumerable<string> keys)
    {
        var commands = new StringBuilder();
        foreach (var key in keys) Append(commands, ["GET", key]);
        Send(commands);
    }

    /// <summary>
    /// Reads one reply to a GET: a value (handed to <paramref name="arrived"/> from a rented buffer; split as
    /// <paramref name="target"/> says when it has the length that expects), or null for nil or an error reply. False, with
    /// nothing handed over, when a cluster node redirected the key (MOVED, ASK).
    /// </summary>
    public bool ReadValue(long maxValueBytes, ArrayPool<byte> buffers, ValueTarget? target, Action<ReadOnlyMemory<byte>?, bool> arrived)
    {
        var line = ReadLine();
        switch (line[0])
        {
            case (byte)'$':
                if (!long.TryParse(line.AsSpan(1), System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out long length) || length < -1)
                    throw new InvalidDataException($"a bulk length that is not one: '{Printable(line)}'");
                if (length == -1)
                {
                    arrived(null, false);
                    return true;
                }
                if (length > maxValueBytes) throw new InvalidDataException($"a {length}-byte value is over MaxValueBytes ({maxValueBytes})");
                bool split = target is { } expected && expected.Fits(length);
                int buffered = split ? target!.Value.HeaderBytes : (int)length;
                var value = buffers.Rent(buffered);
                try
                {
                    ReadExactly(value.AsSpan(0, buffered));
                    if (split) ReadExactly(target!.Value.Payload.Span); // straight from the socket to where it is kept
                    Span<byte> end = stackalloc byte[2];
                    ReadExactly(end);
                    if (end[0] != (byte)'\r' || end[1] != (byte)'\n') throw new InvalidDataException("a value not followed by CRLF");
                    arrived(value.AsMemory(0, buffered), split);
                }
                finally
                {
                    buffers.Return(value);
                }
                return true;
            case (byte)'-':
                if (line.AsSpan(1).StartsWith("MOVED "u8) || line.AsSpan(1).StartsWith("ASK "u8)) return false;
                arrived(null, false); // a LOADING server, a wrong type: a miss
                return true;
            default:
                throw new InvalidDataException($"unexpected reply '{Printable(line)}' to GET");
        }
    }

    private void Expect(string[] command, string what)
    {
        var text = new StringBuilder();
        Append(text, command);
        Send(text);
        var line = ReadLine();
        if (line.Length == 0 || line[0] != (byte)'+') throw new IOException($"{what} was refused: {Encoding.ASCII.GetString(line)}");
    }

    private static void Append(StringBuilder commands, string[] parts)
    {
        commands.Append('*').Append(parts.Length).Append("\r\n");
        foreach (var part in parts) commands.Append('$').Append(Encoding.UTF8.GetByteCount(part)).Append("\r\n").Append(part).Append("\r\n");
    }

    private void Send(StringBuilder commands)
    {
        var bytes = Encoding.UTF8.GetBytes(commands.ToString());
        for (int sent = 0; sent < bytes.Length;) sent += _socket.Send(bytes, sent, bytes.Length - sent, SocketFlags.None);
    }

    /// <summary>The next line without its CRLF.</summary>
    private byte[] ReadLine()
    {
        while (true)
        {
            int newline = _buffer.AsSpan(_start, _end - _start).IndexOf((byte)'\n');
            if (newline >= 0)
            {
                var line = _buffer.AsSpan(_start, Math.Max(0, newline - 1)).ToArray();
                _start += newline + 1;
                return line.Length > 0 ? line : throw new InvalidDataException("an empty reply line");
            }
            if (_end - _start > 4096) throw new InvalidDataException("a reply line longer than 4 KiB");
            Fill();
        }
    }

    private void ReadExactly(Span<byte> into)
    {
        int buffered = Math.Min(into.Length, _end - _start);
        _buffer.AsSpan(_start, buffered).CopyTo(into);
        _start += buffered;
        // Large values go from the socket straight into their buffer.
        for (int read = buffered; read < into.Length;)
        {
            int n = Receive(into[read..]);
            if (n == 0) throw new IOException("the server closed the connection");
            read += n;
        }
    }

    private void Fill()
    {
        if (_start > 0)
        {
            _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
            (_end, _start) = (_end - _start, 0);
        }
        int n = Receive(_buffer.AsSpan(_end));
        _end += n;
    }

    /// <summary>One receive, within what is left of the fetch's deadline.</summary>
    private int Receive(Span<byte> into)
    {
        int milliseconds = _operationMilliseconds;
        if (Deadline != 0)
        {
            long left = Deadline - System.Diagnostics.Stopwatch.GetTimestamp();
            if (left <= 0) throw new TimeoutException("the fetch took longer than its deadline (RemoteTierOptions.FetchTimeout)");
            milliseconds = (int)Math.Clamp(left * 1000 / System.Diagnostics.Stopwatch.Frequency, 1, _operationMilliseconds);
        }
        if (milliseconds != _receiveMilliseconds) _socket.ReceiveTimeout = _receiveMilliseconds = milliseconds;
        int n = _socket.Receive(into);
        if (n == 0) throw new IOException("the server closed the connection");
        return n;
    }

    private static string Printable(byte[] line) =>
        new(Encoding.ASCII.GetString(line, 0, Math.Min(line.Length, 64)).Select(c => char.IsControl(c) ? '?' : c).ToArray());

    public void Dispose() => _socket.Dispose();
}
