using System.Net;
using System.Net.Sockets;
using System.Text;

namespace OrtKvTier.Tests.Support;

/// <summary>
/// A hostile Redis on a loopback port: it answers a client's handshake as a Redis 7 server would, and every GET of a key
/// under <see cref="Namespace"/> with what <see cref="Misbehaviour"/> says (a malformed length, a wrong type, bytes
/// trickled, a reset…); SET can answer out-of-memory. Counts the GETs it spoiled.
/// </summary>
internal sealed class FakeRedis : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _clients = [];
    private int _spoiledGets;

    public FakeRedis(string misbehaviour, string @namespace, bool outOfMemory = false)
    {
        Misbehaviour = misbehaviour;
        Namespace = @namespace;
        OutOfMemory = outOfMemory;
        _listener.Start();
        _ = Task.Run(AcceptAsync);
    }

    public string Misbehaviour { get; }
    public string Namespace { get; }
    public bool OutOfMemory { get; }
    public string Endpoint => $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
    public int SpoiledGets => Volatile.Read(ref _spoiledGets);

    /// <summary>The misbehaviours a GET reply can have.</summary>
    public static readonly string[] Misbehaviours =
        ["malformed-length", "overflowing-length", "negative-length", "huge-length", "integer", "array", "simple-string", "error", "no-crlf", "empty-line", "trickle", "silence", "reset"];

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            lock (_clients) _clients.Add(client);
            _ = Task.Run(() => ServeAsync(client));
        }
    }

    private async Task ServeAsync(Socket client)
    {
        try
        {
            await using var stream = new NetworkStream(client, ownsSocket: true);
            var reader = new BufferedStream(stream);
            while (!_stop.IsCancellationRequested && await ReadCommandAsync(reader) is { } command)
                if (!await AnswerAsync(client, stream, command)) return;
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException) { }
    }

    private async Task<bool> AnswerAsync(Socket client, NetworkStream stream, byte[][] parts)
    {
        var command = parts.Select(p => Encoding.Latin1.GetString(p)).ToArray();
        string name = command[0].ToUpperInvariant();
        string Bulk(string text) => $"${Encoding.Latin1.GetByteCount(text)}\r\n{text}\r\n";
        string? reply = name switch
        {
            "PING" => "+PONG\r\n",
            "ECHO" => Bulk(command[1]),
            "SENTINEL" => "-ERR unknown command 'SENTINEL'\r\n",
            "INFO" => Bulk("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            "CONFIG" => "*0\r\n",
            "CLUSTER" => "-ERR This instance has cluster support disabled\r\n",
            "HELLO" => "-ERR unknown command 'HELLO'\r\n",
            "SUBSCRIBE" => $"*3\r\n$9\r\nsubscribe\r\n{Bulk(command[1])}:1\r\n",
            "INCR" or "INCRBY" => ":2\r\n",
            "EXPIRE" or "PEXPIRE" or "DEL" or "UNLINK" => ":1\r\n",
            "EXISTS" => ":0\r\n",
            "SET" or "SETEX" or "PSETEX" => OutOfMemory ? "-OOM command not allowed when used memory > 'maxmemory'.\r\n" : "+OK\r\n",
            "GET" when command.Length > 1 && command[1].StartsWith(Namespace, StringComparison.Ordinal) => null,
            "GET" => "$-1\r\n",
            "CLIENT" or "SELECT" or "AUTH" => "+OK\r\n",
            _ => $"-ERR unknown command '{name}'\r\n",
        };
        if (reply is not null)
        {
            await stream.WriteAsync(Encoding.Latin1.GetBytes(reply), _stop.Token);
            return true;
        }
        Interlocked.Increment(ref _spoiledGets);
        switch (Misbehaviour)
        {
            case "trickle":
                await stream.WriteAsync("$4000\r\n"u8.ToArray(), _stop.Token);
                for (int i = 0; i < 4000 && !_stop.IsCancellationRequested; i++)
                {
                    await stream.WriteAsync("x"u8.ToArray(), _stop.Token);
                    await Task.Delay(200, _stop.Token);
                }
                return true;
            case "silence":
                await Task.Delay(Timeout.Infinite, _stop.Token);
                return false;
            case "reset":
                client.LingerState = new LingerOption(true, 0);
                client.Close();
                return false;
        }
        string spoiled = Misbehaviour switch
        {
            "malformed-length" => "$12ab\r\n",
            "overflowing-length" => "$99999999999999999999999999\r\n",
            "negative-length" => "$-7\r\n",
            "huge-length" => "$9223372036854775807\r\n",
            "integer" => ":42\r\n",
            "array" => "*2\r\n$1\r\na\r\n$1\r\nb\r\n",
            "simple-string" => "+OK\r\n",
            "error" => "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "no-crlf" => "$3\r\nabcXY",
            "empty-line" => "\r\n",
            var other => throw new ArgumentException($"no misbehaviour '{other}'"),
        };
        await stream.WriteAsync(Encoding.ASCII.GetBytes(spoiled), _stop.Token);
        return true;
    }

    /// <summary>One command: an array of bulk strings (what clients send), or null at the end of the stream.</summary>
    private static async Task<byte[][]?> ReadCommandAsync(Stream reader)
    {
        var header = await ReadLineAsync(reader);
        if (header is null) return null;
        if (!header.StartsWith('*')) return [.. header.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(Encoding.Latin1.GetBytes)]; // inline command
        var parts = new byte[int.Parse(header[1..])][];
        for (int i = 0; i < parts.Length; i++)
        {
            var length = int.Parse((await ReadLineAsync(reader))![1..]);
            var bytes = new byte[length + 2];
            await reader.ReadExactlyAsync(bytes);
            parts[i] = bytes[..length];
        }
        return parts;
    }

    private static async Task<string?> ReadLineAsync(Stream reader)
    {
        var line = new StringBuilder();
        var one = new byte[1];
        while (true)
        {
            if (await reader.ReadAsync(one) == 0) return null;
            if (one[0] == '\n') return line.ToString().TrimEnd('\r');
            line.Append((char)one[0]);
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        lock (_clients)
            foreach (var client in _clients) client.Dispose();
        _stop.Dispose();
    }
}
