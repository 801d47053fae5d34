using System.Runtime.InteropServices;

namespace OrtKvTier.Tensors;

/// <summary>
/// Pre-faults memory in one system call (Linux <c>madvise</c> MADV_POPULATE_WRITE) instead of one
/// page fault per 4 KiB page during a copy, which a fresh process pays for every page of a new
/// tensor. Best effort: elsewhere, or on kernels before 5.14, it does nothing.
/// </summary>
internal static unsafe partial class MemoryAdvice
{
    private const int PopulateWriteAdvice = 23;
    private const int DontNeedAdvice = 4;
    private const long Page = 4096;
    private static volatile bool _unsupported = !OperatingSystem.IsLinux();

    /// <summary>Backs a writable range with pages (only the whole pages inside it, so neighbours are untouched).</summary>
    public static void PopulateWrite(byte* address, long length)
    {
        if (_unsupported || length < 16 * Page) return;
        long start = ((long)address + Page - 1) & ~(Page - 1);
        long end = ((long)address + length) & ~(Page - 1);
        if (end <= start) return;
        try
        {
            int rc = Madvise((void*)start, (nuint)(end - start), PopulateWriteAdvice);
            if (rc != 0 && Marshal.GetLastPInvokeError() == 22 /* EINVAL: old kernel */)
                _unsupported = true;
        }
        catch (EntryPointNotFoundException)
        {
            _unsupported = true;
        }
    }

    /// <summary>
    /// Gives the whole pages inside a range back to the system (Linux <c>madvise</c> MADV_DONTNEED): they read as zeros and
    /// cost no memory until written again. Best effort; elsewhere the memory simply stays mapped.
    /// </summary>
    public static void Release(byte* address, long length)
    {
        if (!OperatingSystem.IsLinux()) return;
        long start = ((long)address + Page - 1) & ~(Page - 1);
        long end = ((long)address + length) & ~(Page - 1);
        if (end <= start) return;
        try
        {
            Madvise((void*)start, (nuint)(end - start), DontNeedAdvice);
        }
        catch (EntryPointNotFoundException) { }
    }

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int Madvise(void* address, nuint length, int advice);
}
