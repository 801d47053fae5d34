// A child process for the reliability tests: a writer to be killed, readers, a lock holder.
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;

var mode = args[0];
var dir = args[1];
switch (mode)
{
    case "writer":
    {
        // writer DIR DURABILITY SEED SLOTS [COUNT]: puts keys 0, 1, 2, ... (COUNT of them, else until killed) and prints
        // "ack INDEX" after each Put returns.
        var durability = Enum.Parse<Durability>(args[2]);
        int seed = int.Parse(args[3]);
        int slots = int.Parse(args[4]);
        long count = args.Length > 5 ? long.Parse(args[5]) : long.MaxValue;
        using var pool = SlotPool.Open(new SlotPoolOptions
        {
            Directory = dir, Identity = TestPayloads.Identity, CapacitySlots = slots, Durability = durability,
            BatchInterval = TimeSpan.FromMilliseconds(5), WriterLockTimeout = TimeSpan.FromSeconds(10),
        });
        Console.WriteLine("ready");
        for (long i = 0; i < count; i++)
        {
            var key = TestPayloads.Key(seed, i);
            pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            Console.WriteLine($"ack {i}");
        }
        Thread.Sleep(Timeout.Infinite); // until killed, like a server
        return 0;
    }
    case "cycler":
    {
        // cycler DIR SLOTS KEYS SECONDS: rewrites KEYS keys through SLOTS slots (heavy reuse), removing and re-putting.
        int slots = int.Parse(args[2]), keys = int.Parse(args[3]);
        var until = DateTime.UtcNow.AddSeconds(double.Parse(args[4]));
        using var pool = SlotPool.Open(new SlotPoolOptions
        {
            Directory = dir, Identity = TestPayloads.Identity, CapacitySlots = slots, Durability = Durability.None,
        });
        Console.WriteLine("ready");
        long puts = 0;
        var rng = new Random(1);
        while (DateTime.UtcNow < until)
        {
            var key = TestPayloads.Key(9, rng.Next(keys));
            pool.Remove(key);
            pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            puts++;
        }
        Console.WriteLine($"puts {puts}");
        return 0;
    }
    case "reader":
    {
        // reader DIR KEYS SECONDS: reads random keys read-only and checks every byte served.
        int keys = int.Parse(args[2]);
        var until = DateTime.UtcNow.AddSeconds(double.Parse(args[3]));
        using var pool = SlotPool.Open(new SlotPoolOptions { Directory = dir, ReadOnly = true });
        Console.WriteLine("ready");
        long hits = 0, misses = 0, wrong = 0;
        var buffer = new byte[pool.PayloadCapacity];
        var rng = new Random(Environment.ProcessId);
        while (DateTime.UtcNow < until)
        {
            var key = TestPayloads.Key(9, rng.Next(keys));
            if (pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int length))
            {
                hits++;
                if (!buffer.AsSpan(0, length).SequenceEqual(TestPayloads.Payload(key))) wrong++;
            }
            else misses++;
        }
        Console.WriteLine($"hits {hits} misses {misses} wrong {wrong} damaged {pool.GetStats().Damaged}");
        return 0;
    }
    case "stall":
    {
        // stall DIR SLOTS SEED: reserves a slot for key (SEED, 0) and freezes in the middle of writing its payload, until killed
        // (a writer whose disk hung, or that died mid-write).
        int slots = int.Parse(args[2]), seed = int.Parse(args[3]);
        var faults = new FaultPlan();
        using var pool = SlotPool.Open(new SlotPoolOptions
        {
            Directory = dir, Medium = new FaultMedium(new FileMedium(dir), faults), Identity = TestPayloads.Identity, CapacitySlots = slots,
            WriterLockTimeout = TimeSpan.FromSeconds(10),
        });
        var key = TestPayloads.Key(seed, 0);
        faults.PauseWrites(StoredFormats.DataFileName);
        _ = Task.Run(() => pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key)));
        while (faults.WritesWaiting == 0) Thread.Sleep(1);
        Console.WriteLine("ready");
        Thread.Sleep(Timeout.Infinite);
        return 0;
    }
    case "hold":
    {
        // hold DIR: creates the pool, then holds its writer lock as a change in progress would, until killed.
        using (SlotPool.Open(new SlotPoolOptions { Directory = dir, Identity = TestPayloads.Identity, CapacitySlots = 4 })) { }
        using var held = SlotPool.HoldWriterLock(dir, TimeSpan.FromSeconds(10));
        Console.WriteLine("ready");
        Thread.Sleep(Timeout.Infinite);
        return 0;
    }
    default:
        Console.Error.WriteLine($"unknown mode {mode}");
        return 2;
}
